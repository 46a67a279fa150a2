//! `--server URL` (or `LOOM_SERVER`): commands through a running `loom server` or `loom worker
//! --http`, over its HTTP API, instead of opening the database. The answers are read back into
//! the types the commands print, so a command prints the same through a server as on the
//! database itself.

use std::time::{Duration, UNIX_EPOCH};

use loom_core::{Event, Failure, Payload, Progress, Seq, TagValue, Tags, Timestamp, WorkflowId};
use loom_storage::{ListCursor, ListQuery, Page, RunSummary, WorkflowStatus, WorkflowSummary};
use loom_worker::{ResetDone, ResetTo, StartOptions, TaskState};
use serde_json::{Value, json};

use loom_server::api::{rfc3339, tag_json};

use crate::Fail;

/// A server to send commands to.
#[derive(Clone)]
pub(crate) struct Remote {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Remote {
    /// The server at `url` (`http://HOST:PORT`), sending `token` if there is one.
    pub(crate) fn new(url: &str, token: Option<String>) -> Result<Remote, Fail> {
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.len() <= "https://".len()
        {
            return Err(Fail::usage(format!(
                "--server takes the server's URL, such as http://127.0.0.1:8237, not {url:?}"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Remote {
            base: base.to_owned(),
            token: token.filter(|t| !t.is_empty()),
            agent,
        })
    }

    /// One call; the answer's JSON, or the server's error as the command's.
    async fn call(
        &self,
        method: &'static str,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, Fail> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.call_blocking(method, &path, body))
            .await
            .map_err(|e| Fail::failed(format!("a request to the server panicked: {e}")))?
    }

    fn call_blocking(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Fail> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let answer = if method == "GET" || method == "DELETE" {
            let mut r = if method == "GET" {
                self.agent.get(&url)
            } else {
                self.agent.delete(&url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        } else {
            let r = if method == "PUT" {
                self.agent.put(&url)
            } else {
                self.agent.post(&url)
            };
            let mut r = r.header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or_else(|| json!({})).to_string().as_bytes())
        };
        let mut answer = answer
            .map_err(|e| Fail::failed(format!("cannot reach the server at {}: {e}", self.base)))?;
        let status = answer.status().as_u16();
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["error"].as_str().map_or_else(
            || format!("the server answered {status}: {text}"),
            str::to_owned,
        );
        Err(match status {
            400..=499 => Fail::usage(message),
            _ => Fail::failed(message),
        })
    }

    /// A schedule call (`loom schedule ... --server`): the answer read as the API's shape.
    pub(crate) async fn schedule_call<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        path: String,
        body: Option<Value>,
    ) -> Result<T, Fail> {
        let answer = self.call(method, path, body).await?;
        serde_json::from_value(answer)
            .map_err(|e| Fail::failed(format!("the server's answer is not a schedule's: {e}")))
    }

    /// Starts a workflow by type name.
    pub(crate) async fn start(
        &self,
        workflow: &str,
        input: Payload,
        options: &StartOptions,
    ) -> Result<WorkflowId, Fail> {
        let tags: serde_json::Map<String, Value> = options
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), tag_json(v)))
            .collect();
        let body = json!({
            "type": workflow,
            "input": input.into_json(),
            "id": options.id.as_ref().map(WorkflowId::as_str),
            "tags": tags,
            "version": options.version,
            "run_timeout_s": options.run_timeout.map(|d| d.as_secs_f64()),
            "execution_timeout_s": options.execution_timeout.map(|d| d.as_secs_f64()),
        });
        let answer = self
            .call("POST", "/api/v1/workflows".into(), Some(body))
            .await?;
        Ok(WorkflowId::new(answer["id"].as_str().unwrap_or_default()))
    }

    /// One workflow.
    pub(crate) async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary, Fail> {
        let w = self
            .call(
                "GET",
                format!("/api/v1/workflows/{}", segment(id.as_str())),
                None,
            )
            .await?;
        summary(&w)
    }

    /// Waits until the workflow has ended, reading it again every `every`.
    pub(crate) async fn wait(
        &self,
        id: &WorkflowId,
        every: Duration,
    ) -> Result<WorkflowSummary, Fail> {
        loop {
            let s = self.describe(id).await?;
            if s.status.is_terminal() {
                return Ok(s);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// A page of workflows.
    pub(crate) async fn list(&self, q: &ListQuery) -> Result<Page<WorkflowSummary>, Fail> {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = q.status {
            ser.append_pair("status", &s.to_string());
        }
        if let Some(n) = &q.name {
            ser.append_pair("type", n);
        }
        if let Some(v) = q.version {
            ser.append_pair("version", &v.to_string());
        }
        if let Some(p) = &q.parent {
            ser.append_pair("parent", p.as_str());
        }
        for (key, t) in [
            ("created_after", q.created_after),
            ("created_before", q.created_before),
            ("closed_before", q.closed_before),
        ] {
            if let Some(t) = t {
                ser.append_pair(key, &rfc3339(t));
            }
        }
        for f in &q.tags {
            let value = match &f.value {
                TagValue::Time(t) => rfc3339(*t),
                v => v.text(),
            };
            ser.append_pair("tag", &format!("{}{}{value}", f.key, f.cmp.as_str()));
        }
        let filters = ser.finish();
        // The API's pages hold at most 1,000: a longer list is read a page at a time.
        let (mut items, mut after) = (Vec::new(), q.after.clone());
        loop {
            let want = q.limit.saturating_sub(items.len()).clamp(1, 1_000);
            let mut path = format!("/api/v1/workflows?limit={want}");
            if !filters.is_empty() {
                path.push('&');
                path.push_str(&filters);
            }
            if let Some(c) = &after {
                let cursor = format!("{}.{}", c.created_at.as_millis(), c.id.as_str());
                path.push_str("&cursor=");
                path.extend(form_urlencoded::byte_serialize(cursor.as_bytes()));
            }
            let page = self.call("GET", path, None).await?;
            for w in page["workflows"].as_array().into_iter().flatten() {
                items.push(summary(w)?);
            }
            after = page["next"].as_str().and_then(|c| {
                let (ms, id) = c.split_once('.')?;
                Some(ListCursor {
                    created_at: Timestamp::from_millis(ms.parse().ok()?),
                    id: WorkflowId::new(id),
                })
            });
            if after.is_none() || items.len() >= q.limit {
                return Ok(Page { items, next: after });
            }
        }
    }

    /// Sends a signal.
    pub(crate) async fn signal(
        &self,
        id: &WorkflowId,
        name: &str,
        payload: Payload,
    ) -> Result<(), Fail> {
        self.call(
            "POST",
            format!("/api/v1/workflows/{}/signal", segment(id.as_str())),
            Some(json!({ "name": name, "payload": payload.into_json() })),
        )
        .await
        .map(|_| ())
    }

    /// An operator action: `cancel`, `terminate`, `pause` or `resume` with its body.
    pub(crate) async fn act(&self, id: &WorkflowId, action: &str, body: Value) -> Result<(), Fail> {
        self.call(
            "POST",
            format!("/api/v1/workflows/{}/{action}", segment(id.as_str())),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// A reset.
    pub(crate) async fn reset(
        &self,
        id: &WorkflowId,
        to: ResetTo,
        reason: &str,
        signals: bool,
    ) -> Result<ResetDone, Fail> {
        let to = match to {
            ResetTo::LastTask => "last-task".to_owned(),
            ResetTo::Event(seq) => seq.get().to_string(),
        };
        let answer = self
            .call(
                "POST",
                format!("/api/v1/workflows/{}/reset", segment(id.as_str())),
                Some(json!({ "to": to, "reason": reason, "no_signals": !signals })),
            )
            .await?;
        Ok(ResetDone {
            run: answer["run"].as_u64().unwrap_or(0) as u32,
            point: Seq::new(answer["point"].as_u64().unwrap_or(0)),
        })
    }
}

impl Remote {
    /// A run's whole history (the current run's without `run`), read a page at a time.
    pub(crate) async fn history(
        &self,
        id: &WorkflowId,
        run: Option<u32>,
    ) -> Result<Vec<Event>, Fail> {
        let mut events = Vec::new();
        let mut after = 0u64;
        loop {
            let mut path = format!(
                "/api/v1/workflows/{}/history?limit=1000&after={after}",
                segment(id.as_str())
            );
            if let Some(run) = run {
                path.push_str(&format!("&run={run}"));
            }
            let page = self.call("GET", path, None).await?;
            for e in page["events"].as_array().into_iter().flatten() {
                events.push(event(e)?);
            }
            match page["next"].as_u64() {
                Some(next) => after = next,
                None => return Ok(events),
            }
        }
    }

    /// Where each of the workflow's tasks stands.
    pub(crate) async fn task_states(&self, id: &WorkflowId) -> Result<Vec<TaskState>, Fail> {
        let answer = self
            .call(
                "GET",
                format!("/api/v1/workflows/{}/tasks", segment(id.as_str())),
                None,
            )
            .await?;
        Ok(answer["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| TaskState {
                task: t["task"].as_str().unwrap_or_default().to_owned(),
                activity_id: t["activity_id"].as_u64(),
                attempt: t["attempt"].as_u64().map(|a| a as u32),
                state: match t["state"].as_str() {
                    Some("running") => "running",
                    Some("ready") => "ready",
                    Some("waiting") => "waiting",
                    _ => "idle",
                },
                at: time(&t["at"]),
                waited_ms: t["waited_ms"].as_u64(),
                deliveries: t["deliveries"].as_u64().unwrap_or(0) as u32,
                last_failure: t["last_failure"].as_str().map(str::to_owned),
            })
            .collect())
    }

    /// The workflow's earlier runs.
    pub(crate) async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>, Fail> {
        let answer = self
            .call(
                "GET",
                format!("/api/v1/workflows/{}/runs", segment(id.as_str())),
                None,
            )
            .await?;
        Ok(answer["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| RunSummary {
                run: r["run"].as_u64().unwrap_or(0) as u32,
                started_at: time(&r["started_at"]).unwrap_or(Timestamp::EPOCH),
                ended_at: time(&r["ended_at"]).unwrap_or(Timestamp::EPOCH),
                events: r["events"].as_u64().unwrap_or(0),
            })
            .collect())
    }
}

impl Remote {
    /// Deletes a batch of closed workflows; answers their ids.
    pub(crate) async fn purge(&self, purge: &loom_storage::Purge) -> Result<Vec<WorkflowId>, Fail> {
        let answer = self
            .call(
                "POST",
                "/api/v1/purge".into(),
                Some(json!({
                    "older_than_s": purge.older_than.as_secs_f64(),
                    "status": purge.status.map(|s| s.to_string()),
                    "type": purge.name,
                    "limit": purge.limit,
                })),
            )
            .await?;
        Ok(answer["purged"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(WorkflowId::new)
            .collect())
    }

    /// Counts across the store.
    pub(crate) async fn stats(&self) -> Result<loom_storage::Stats, Fail> {
        let v = self.call("GET", "/api/v1/stats".into(), None).await?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let mut workflows = std::collections::BTreeMap::new();
        for (status, count) in v["workflows"].as_object().into_iter().flatten() {
            if let (Ok(status), Some(count)) = (status.parse::<WorkflowStatus>(), count.as_u64()) {
                workflows.insert(status, count);
            }
        }
        Ok(loom_storage::Stats {
            workflows,
            events: n("events"),
            workflow_tasks_ready: n("workflow_tasks_ready"),
            workflow_tasks_running: n("workflow_tasks_running"),
            activity_tasks_ready: n("activity_tasks_ready"),
            activity_tasks_running: n("activity_tasks_running"),
            activity_tasks_waiting: n("activity_tasks_waiting"),
            messages_waiting: n("messages_waiting"),
            oldest_ready_at: time(&v["oldest_ready_at"]),
            next_due_at: time(&v["next_due_at"]),
            at: time(&v["at"]).unwrap_or(Timestamp::EPOCH),
        })
    }

    /// `loom workflows` through the server: the types it registers.
    pub(crate) async fn types(&self, json: bool) -> Result<std::process::ExitCode, Fail> {
        let types = self.call("GET", "/api/v1/types".into(), None).await?;
        if json {
            crate::render::json(&types)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        for w in types["workflows"].as_array().into_iter().flatten() {
            let versions: Vec<String> = w["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            println!(
                "{} (versions {})",
                w["name"].as_str().unwrap_or_default(),
                versions.join(", ")
            );
        }
        let activities: Vec<&str> = types["activities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!("activities: {}", activities.join(", "));
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// An event as the API writes it, read back into the history's own form.
fn event(e: &Value) -> Result<Event, Fail> {
    let mut whole = e["fields"].as_object().cloned().unwrap_or_default();
    whole.insert("seq".into(), e["seq"].clone());
    whole.insert(
        "at".into(),
        Value::from(time(&e["at"]).unwrap_or(Timestamp::EPOCH).as_millis()),
    );
    whole.insert("type".into(), e["type"].clone());
    serde_json::from_value(Value::Object(whole)).map_err(|err| {
        Fail::failed(format!(
            "the server sent an event this loom cannot read: {err}"
        ))
    })
}

/// A workflow id as one path segment.
/// An id as one path segment of the API, every byte but letters and digits percent-encoded.
pub(crate) fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn time(v: &Value) -> Option<Timestamp> {
    let t = humantime::parse_rfc3339_weak(v.as_str()?).ok()?;
    Some(Timestamp::from_millis(
        i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?,
    ))
}

/// A workflow as the API writes it, read back into the summary the commands print.
fn summary(w: &Value) -> Result<WorkflowSummary, Fail> {
    let bad = |what: &str| Fail::failed(format!("the server's answer has no {what}: {w}"));
    let status: WorkflowStatus = w["status"]
        .as_str()
        .ok_or_else(|| bad("status"))?
        .parse()
        .map_err(|_| bad("status it names"))?;
    let failure = w["failure"].as_object().map(|f| Failure {
        kind: f
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        message: f
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        non_retryable: f
            .get("non_retryable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        details: f
            .get("details")
            .filter(|d| !d.is_null())
            .cloned()
            .map(Payload::from_json),
    });
    let mut tags = Tags::new();
    if let Some(map) = w["tags"].as_object() {
        for (k, v) in map {
            let value = match v {
                Value::Bool(b) => TagValue::Bool(*b),
                Value::Number(n) => TagValue::Int(n.as_i64().unwrap_or_default()),
                Value::String(s) => match TagValue::parse(s) {
                    t @ TagValue::Time(_) => t,
                    _ => TagValue::Text(s.clone()),
                },
                other => TagValue::Text(other.to_string()),
            };
            tags.insert(k.clone(), value);
        }
    }
    Ok(WorkflowSummary {
        id: WorkflowId::new(w["id"].as_str().ok_or_else(|| bad("id"))?),
        name: w["type"].as_str().unwrap_or_default().to_owned(),
        version: w["version"].as_u64().unwrap_or(1) as u32,
        status,
        input: Payload::from_json(w["input"].clone()),
        created_at: time(&w["created_at"]).ok_or_else(|| bad("creation time"))?,
        updated_at: time(&w["updated_at"]).ok_or_else(|| bad("update time"))?,
        closed_at: time(&w["closed_at"]),
        last_seq: Seq::new(w["last_seq"].as_u64().unwrap_or(0)),
        output: Some(&w["output"])
            .filter(|o| !o.is_null() || status == WorkflowStatus::Completed)
            .map(|o| Payload::from_json(o.clone())),
        failure,
        pause_reason: w["pause_reason"].as_str().map(str::to_owned),
        progress: serde_json::from_value::<Progress>(w["progress"].clone()).ok(),
        parent: w["parent"].as_str().map(WorkflowId::new),
        run: w["run"].as_u64().unwrap_or(1) as u32,
        tags,
    })
}
