//! `loom schedule ...`: create, list, describe, update, pause, unpause, trigger, backfill and
//! delete schedules. Each is checked before the database is touched where it can be (specs,
//! time zones, the workflow type and its input), so bad input exits 2 with nothing written.

use std::process::ExitCode;
use std::time::Duration;

use loom_core::{Payload, Registry, Timestamp};
use loom_server::api::rfc3339;
use loom_server::schedules::{
    OverlapPolicy, ScheduleDescribed, SchedulePage, ScheduleView, request_json,
};
use loom_storage::WorkflowStatus;
use loom_storage::schedule::{
    IntervalSpec, Overlap, ScheduleAction, SchedulePolicy, ScheduleSpec, span,
};
use loom_worker::{Client, ScheduleDefinition};
use serde_json::json;

use crate::db::Missing;
use crate::remote::segment;
use crate::{Fail, render};

/// What `loom schedule` does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Create a schedule: it starts a workflow at each fire time of its cron expressions and
    /// intervals, once per fire time whatever the number of workers (`loom worker` runs it).
    Create {
        /// The schedule's id.
        id: String,
        #[command(flatten)]
        def: DefinitionArgs,
        /// Create it paused (`loom schedule unpause` lets it fire).
        #[arg(long)]
        paused: bool,
    },
    /// List the schedules, by id.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Those after this id (for the next page).
        #[arg(long)]
        after: Option<String>,
    },
    /// A schedule: its spec and policies, its next ten fire times, the workflows it started
    /// that still run, its last actions and their workflows' results, and its missed fires.
    Describe {
        /// The schedule's id.
        id: String,
    },
    /// Change a schedule: the options given replace what it had (a `--cron` or
    /// `--interval` replaces all of its cron expressions and intervals); fires of the new
    /// spec are taken from now on.
    Update {
        /// The schedule's id.
        id: String,
        #[command(flatten)]
        def: DefinitionArgs,
    },
    /// Pause a schedule: its fire times pass without starting anything until it is unpaused.
    Pause {
        /// The schedule's id.
        id: String,
        /// Why, and who (shown by `describe`).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Let a paused schedule fire again, from now on.
    Unpause {
        /// The schedule's id.
        id: String,
        /// A note.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Fire a schedule now, under its overlap policy (a worker starts it within its poll
    /// interval).
    Trigger {
        /// The schedule's id.
        id: String,
    },
    /// Run a schedule's fire times in a past range, under its overlap policy and whatever its
    /// catch-up window; fire times that already started a workflow start nothing.
    Backfill {
        /// The schedule's id.
        id: String,
        /// The first time (RFC 3339, such as 2024-03-01T00:00:00Z).
        #[arg(long)]
        from: String,
        /// The last time (RFC 3339).
        #[arg(long)]
        to: String,
    },
    /// Delete a schedule (the workflows it started are left as they are).
    Delete {
        /// The schedule's id.
        id: String,
    },
}

/// The parts of a schedule, as options.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct DefinitionArgs {
    /// The workflow type it starts (required to create).
    #[arg(long)]
    workflow: Option<String>,
    /// Its input, as JSON.
    #[arg(long)]
    input: Option<String>,
    /// Its version (the newest the firing worker knows, if not given).
    #[arg(long)]
    version: Option<u32>,
    /// A cron expression: five fields, or six with seconds first (`0 30 2 * * *`); names of
    /// days and months, L, W and # are understood. Repeat for several.
    #[arg(long)]
    cron: Vec<String>,
    /// The IANA time zone of the cron expressions (UTC if not given).
    #[arg(long)]
    tz: Option<String>,
    /// An interval from the Unix epoch, with an optional offset: `1h`, `1h/5m` (at five past
    /// each hour, UTC). Repeat for several.
    #[arg(long)]
    interval: Vec<String>,
    /// No fire before this time (RFC 3339).
    #[arg(long)]
    start: Option<String>,
    /// No fire after this time (RFC 3339).
    #[arg(long)]
    end: Option<String>,
    /// Delay each fire by up to this much (`30s`): the same delay for the same fire on every
    /// worker, never past the next fire.
    #[arg(long)]
    jitter: Option<String>,
    /// What a fire does while a workflow this schedule started still runs: skip,
    /// buffer-one, buffer-all, allow-all, cancel-other, terminate-other.
    #[arg(long)]
    overlap: Option<String>,
    /// How old a fire missed while no worker ran may be and still be taken (`1h`, `30days`);
    /// older ones are recorded as missed. A year if not given.
    #[arg(long)]
    catchup_window: Option<String>,
    /// The started workflows' ids: `{schedule}` and `{time}` (the fire time, RFC 3339 in UTC)
    /// are replaced; `{time}` is required. `{schedule}-{time}` if not given.
    #[arg(long)]
    id_pattern: Option<String>,
    /// A tag each started workflow carries, `key=value`. Repeat for several.
    #[arg(long = "tag")]
    tags: Vec<String>,
}

fn time_arg(flag: &str, text: &str) -> Result<Timestamp, Fail> {
    let ts: jiff::Timestamp = text.parse().map_err(|e| {
        Fail::usage(format!(
            "{flag} {text:?} is not an RFC 3339 time such as 2024-03-01T00:00:00Z ({e})"
        ))
    })?;
    Ok(Timestamp::from_millis(ts.as_millisecond()))
}

fn duration_arg(flag: &str, text: &str) -> Result<Duration, Fail> {
    humantime::parse_duration(text).map_err(|e| {
        Fail::usage(format!(
            "{flag} {text:?} is not a duration such as 90s or 1h ({e})"
        ))
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DefinitionArgs {
    /// The definition these options give over `base` (a create's defaults, or what the
    /// schedule has).
    fn over(self, mut def: ScheduleDefinition) -> Result<ScheduleDefinition, Fail> {
        if let Some(w) = self.workflow {
            def.action.workflow = w;
        }
        if let Some(input) = self.input {
            def.action.input = Payload::parse(&input)
                .map_err(|e| Fail::usage(format!("--input is not valid JSON ({e})")))?;
        }
        if self.version.is_some() {
            def.action.version = self.version;
        }
        if !self.cron.is_empty() || !self.interval.is_empty() {
            def.spec.cron = self.cron;
            def.spec.intervals = self
                .interval
                .iter()
                .map(|text| {
                    let (every, offset) = match text.split_once('/') {
                        Some((e, o)) => (e, Some(o)),
                        None => (text.as_str(), None),
                    };
                    Ok(IntervalSpec {
                        every_ms: ms(duration_arg("--interval", every)?),
                        offset_ms: offset
                            .map(|o| duration_arg("--interval", o))
                            .transpose()?
                            .map_or(0, ms),
                    })
                })
                .collect::<Result<_, Fail>>()?;
        }
        if let Some(tz) = self.tz {
            def.spec.timezone = tz;
        }
        if let Some(s) = self.start {
            def.spec.start_at = Some(time_arg("--start", &s)?);
        }
        if let Some(e) = self.end {
            def.spec.end_at = Some(time_arg("--end", &e)?);
        }
        if let Some(j) = self.jitter {
            def.spec.jitter_ms = ms(duration_arg("--jitter", &j)?);
        }
        if let Some(o) = self.overlap {
            def.policy.overlap = o
                .parse::<Overlap>()
                .map_err(|e| Fail::usage(format!("--overlap: {e}")))?;
        }
        if let Some(w) = self.catchup_window {
            def.policy.catchup_window_ms = ms(duration_arg("--catchup-window", &w)?);
        }
        if let Some(p) = self.id_pattern {
            def.action.id_pattern = p;
        }
        if !self.tags.is_empty() {
            def.action.tags = self
                .tags
                .iter()
                .map(|t| crate::commands::parse_tag(t))
                .collect::<Result<_, Fail>>()?;
        }
        // The spec and action on their own, so that their errors name what is wrong before
        // anything is read or written.
        def.spec.calendar().map_err(Fail::usage)?;
        def.action.check().map_err(Fail::usage)?;
        Ok(def)
    }
}

/// Where a schedule command acts: the database, or a server's API (`--server`). Either way
/// the answers are the API's shapes, so a command prints the same through a server as on the
/// database.
pub(crate) enum Place {
    /// The database, through the `Client`.
    Local(Client),
    /// A server, through its API.
    Remote(crate::remote::Remote),
}

impl Place {
    async fn create(
        &self,
        registry: &Registry,
        id: &str,
        def: ScheduleDefinition,
        paused: bool,
    ) -> Result<ScheduleView, Fail> {
        match self {
            Place::Local(c) => Ok(ScheduleView::from(
                &c.create_schedule(registry, id, def, paused)
                    .await
                    .map_err(Fail::from_client)?,
            )),
            Place::Remote(r) => {
                let body = request_json(Some(id), &def, paused);
                r.schedule_call("POST", "/api/v1/schedules".into(), Some(body))
                    .await
            }
        }
    }

    async fn update(
        &self,
        registry: &Registry,
        id: &str,
        def: ScheduleDefinition,
    ) -> Result<ScheduleView, Fail> {
        match self {
            Place::Local(c) => Ok(ScheduleView::from(
                &c.update_schedule(registry, id, def)
                    .await
                    .map_err(Fail::from_client)?,
            )),
            Place::Remote(r) => {
                let body = request_json(None, &def, false);
                r.schedule_call(
                    "PUT",
                    format!("/api/v1/schedules/{}", segment(id)),
                    Some(body),
                )
                .await
            }
        }
    }

    /// What the schedule does now: what an update starts from.
    async fn definition(&self, id: &str) -> Result<ScheduleDefinition, Fail> {
        match self {
            Place::Local(c) => {
                let s = c.schedule(id).await.map_err(Fail::from_client)?;
                Ok(ScheduleDefinition {
                    spec: s.spec,
                    action: s.action,
                    policy: s.policy,
                })
            }
            Place::Remote(_) => self
                .describe(id)
                .await?
                .schedule
                .definition()
                .map_err(|e| Fail::failed(e.message().to_owned())),
        }
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<SchedulePage, Fail> {
        match self {
            Place::Local(c) => {
                let list = c.schedules(after, limit).await.map_err(Fail::from_client)?;
                let next = (list.len() == limit)
                    .then(|| list.last().map(|s| s.id.clone()))
                    .flatten();
                Ok(SchedulePage {
                    schedules: list.iter().map(ScheduleView::from).collect(),
                    next,
                })
            }
            Place::Remote(r) => {
                let mut query = format!("?limit={limit}");
                if let Some(a) = after {
                    query.push_str(&format!("&after={}", segment(a)));
                }
                r.schedule_call("GET", format!("/api/v1/schedules{query}"), None)
                    .await
            }
        }
    }

    async fn describe(&self, id: &str) -> Result<ScheduleDescribed, Fail> {
        match self {
            Place::Local(c) => Ok(c
                .describe_schedule(id)
                .await
                .map_err(Fail::from_client)?
                .into()),
            Place::Remote(r) => {
                r.schedule_call("GET", format!("/api/v1/schedules/{}", segment(id)), None)
                    .await
            }
        }
    }

    /// An operation that answers the schedule: `pause`, `unpause`, `trigger`, `backfill`.
    async fn act(&self, id: &str, op: Op<'_>) -> Result<ScheduleView, Fail> {
        match self {
            Place::Local(c) => {
                let s = match op {
                    Op::Pause(note) => c.pause_schedule(id, note).await,
                    Op::Unpause(note) => c.unpause_schedule(id, note).await,
                    Op::Trigger => c.trigger_schedule(id).await,
                    Op::Backfill(from, to) => c.backfill_schedule(id, from, to).await,
                }
                .map_err(Fail::from_client)?;
                Ok(ScheduleView::from(&s))
            }
            Place::Remote(r) => {
                let (verb, body) = match op {
                    Op::Pause(note) => ("pause", json!({ "note": note })),
                    Op::Unpause(note) => ("unpause", json!({ "note": note })),
                    Op::Trigger => ("trigger", json!({})),
                    Op::Backfill(from, to) => (
                        "backfill",
                        json!({ "from": rfc3339(from), "to": rfc3339(to) }),
                    ),
                };
                r.schedule_call(
                    "POST",
                    format!("/api/v1/schedules/{}/{verb}", segment(id)),
                    Some(body),
                )
                .await
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<(), Fail> {
        match self {
            Place::Local(c) => c.delete_schedule(id).await.map_err(Fail::from_client),
            Place::Remote(r) => r
                .schedule_call::<serde_json::Value>(
                    "DELETE",
                    format!("/api/v1/schedules/{}", segment(id)),
                    None,
                )
                .await
                .map(drop),
        }
    }
}

enum Op<'a> {
    Pause(&'a str),
    Unpause(&'a str),
    Trigger,
    Backfill(Timestamp, Timestamp),
}

/// Runs one `loom schedule` command at the place `open` gives once its arguments are known
/// to be good (on the database, a create may create it; the others need it to exist).
pub(crate) async fn run(
    command: ScheduleCommand,
    open: impl AsyncFn(Missing) -> Result<Place, Fail>,
    registry: &Registry,
    remote: bool,
    json: bool,
) -> Result<ExitCode, Fail> {
    match command {
        ScheduleCommand::Create { id, def, paused } => {
            if def.workflow.is_none() {
                return Err(Fail::usage("--workflow is required to create a schedule"));
            }
            if def.cron.is_empty() && def.interval.is_empty() {
                return Err(Fail::usage(
                    "a schedule needs at least one --cron or --interval",
                ));
            }
            let base = ScheduleDefinition {
                spec: ScheduleSpec::default(),
                action: ScheduleAction {
                    workflow: String::new(),
                    version: None,
                    input: Payload::NULL,
                    id_pattern: loom_storage::schedule::DEFAULT_ID_PATTERN.into(),
                    tags: loom_core::Tags::new(),
                },
                policy: SchedulePolicy::default(),
            };
            let def = def.over(base)?;
            if !remote {
                // The type and input against this binary's registry, before the database is
                // opened; through a server, the server checks them against its own.
                def.check(registry, &loom_worker::Limits::default())
                    .map_err(Fail::from_client)?;
            }
            let place = open(Missing::Create).await?;
            let s = place.create(registry, &id, def, paused).await?;
            done(&s, "Created", json)
        }
        ScheduleCommand::Update { id, def } => {
            let place = open(Missing::Refuse).await?;
            let def = def.over(place.definition(&id).await?)?;
            let s = place.update(registry, &id, def).await?;
            done(&s, "Updated", json)
        }
        ScheduleCommand::List { limit, after } => {
            if !(1..=1_000).contains(&limit) {
                return Err(Fail::usage("--limit takes a number from 1 to 1000"));
            }
            let page = open(Missing::Refuse)
                .await?
                .list(after.as_deref(), limit)
                .await?;
            if json {
                render::json(&page)?;
                return Ok(ExitCode::SUCCESS);
            }
            if page.schedules.is_empty() {
                println!("No schedules.");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = render::table(&[
                "ID", "WORKFLOW", "WHEN", "OVERLAP", "STATE", "NEXT", "STARTED", "MISSED",
            ]);
            for s in &page.schedules {
                table.add_row(vec![
                    s.id.clone(),
                    s.workflow_type.clone(),
                    when_text(s),
                    overlap_text(s.overlap),
                    if s.paused { "paused" } else { "active" }.to_owned(),
                    s.wake_at.clone().unwrap_or_else(|| "-".to_owned()),
                    s.counts.started.to_string(),
                    s.counts.missed.to_string(),
                ]);
            }
            println!("{table}");
            if let Some(next) = page.next {
                println!("More after {next}: loom schedule list --after {next}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Describe { id } => {
            let d = open(Missing::Refuse).await?.describe(&id).await?;
            if json {
                render::json(&d)?;
            } else {
                describe_text(&d);
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Pause { id, note } => {
            let s = open(Missing::Refuse)
                .await?
                .act(&id, Op::Pause(&note))
                .await?;
            done(&s, "Paused", json)
        }
        ScheduleCommand::Unpause { id, note } => {
            let s = open(Missing::Refuse)
                .await?
                .act(&id, Op::Unpause(&note))
                .await?;
            done(&s, "Unpaused", json)
        }
        ScheduleCommand::Trigger { id } => {
            let s = open(Missing::Refuse).await?.act(&id, Op::Trigger).await?;
            done(&s, "Triggered", json)
        }
        ScheduleCommand::Backfill { id, from, to } => {
            let from = time_arg("--from", &from)?;
            let to = time_arg("--to", &to)?;
            if to < from {
                return Err(Fail::usage("--to is before --from"));
            }
            let s = open(Missing::Refuse)
                .await?
                .act(&id, Op::Backfill(from, to))
                .await?;
            done(&s, "Asked a backfill of", json)
        }
        ScheduleCommand::Delete { id } => {
            open(Missing::Refuse).await?.delete(&id).await?;
            if json {
                render::json(&json!({ "id": id, "deleted": true }))?;
            } else {
                println!("Deleted schedule {id}.");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What a change answers: the schedule as written.
fn done(s: &ScheduleView, what: &str, json: bool) -> Result<ExitCode, Fail> {
    if json {
        render::json(s)?;
    } else {
        let next = match &s.wake_at {
            Some(t) if !s.paused => format!("; next look at {t}"),
            _ if s.paused => "; paused".to_owned(),
            _ => "; no fire to come".to_owned(),
        };
        println!("{what} schedule {}{next}.", s.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn overlap_text(o: OverlapPolicy) -> String {
    Overlap::from(o).to_string()
}

/// The spec of a schedule as shown, in one line.
fn when_text(s: &ScheduleView) -> String {
    s.definition()
        .map(|d| d.spec.to_string())
        .unwrap_or_else(|e| e.message().to_owned())
}

fn describe_text(d: &ScheduleDescribed) {
    let s = &d.schedule;
    let line = |k: &str, v: String| println!("{k:>10}  {v}");
    line("schedule", s.id.clone());
    line("workflow", {
        let version = s
            .workflow_version
            .map_or_else(String::new, |v| format!(" v{v}"));
        format!("{}{version}, input {}", s.workflow_type, s.input)
    });
    line("ids", s.id_pattern.clone());
    line("when", when_text(s));
    if let Some(t) = &s.start_at {
        line("from", t.clone());
    }
    if let Some(t) = &s.end_at {
        line("until", t.clone());
    }
    if s.jitter_ms > 0 {
        line("jitter", span(s.jitter_ms));
    }
    line(
        "policy",
        format!(
            "overlap {}, catch up fires missed within {}",
            overlap_text(s.overlap),
            span(s.catchup_window_ms)
        ),
    );
    line(
        "state",
        if s.paused {
            format!("paused {}", s.note)
        } else {
            "active".to_owned()
        },
    );
    let c = &s.counts;
    line(
        "counts",
        format!(
            "{} started, {} skipped, {} missed, {} already started, {} cancelled, {} terminated",
            c.started, c.skipped, c.missed, c.already_started, c.cancelled, c.terminated
        ),
    );
    for t in &d.upcoming {
        line("next", t.clone());
    }
    for w in &d.running {
        line("running", format!("{} since {}", w.id, w.created_at));
    }
    for t in &s.buffered {
        line("buffered", t.clone());
    }
    for r in &d.recent {
        let status = r.status.map_or_else(
            || "purged".to_owned(),
            |st| WorkflowStatus::from(st).to_string(),
        );
        let what = match (r.outcome.as_str(), &r.workflow) {
            ("started", Some(w)) => format!("started {w} ({status})"),
            ("already_started", Some(w)) => format!("{w} existed already"),
            ("skipped", _) => "skipped (overlap policy)".to_owned(),
            ("missed", _) => "missed (older than the catch-up window)".to_owned(),
            (other, _) => other.to_owned(),
        };
        line("fired", format!("{} ({}): {what}", r.nominal, r.source));
    }
    for t in &s.missed {
        line("missed", t.clone());
    }
}
