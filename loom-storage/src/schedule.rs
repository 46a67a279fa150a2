//! Schedules: workflows started on cron expressions and intervals, each fire time at most
//! once, whatever the number of workers.
//!
//! A [`Schedule`] is one record of the store: what to start ([`ScheduleAction`]), when
//! ([`ScheduleSpec`]: cron expressions in a time zone, intervals, a start and an end, jitter),
//! how fires that overlap a running workflow are handled ([`Overlap`]), how far back fires
//! missed while no worker ran are still taken (the catch-up window), and its state: the
//! nominal time it has dealt with, the workflows it started that still run, fires buffered,
//! requested by hand or backfilled, counts, and its last actions.
//!
//! Every change to a schedule is a read, a decision here, and a write checked against the
//! version read ([`ScheduleWrite`], [`engine::write_schedule`](crate::engine::write_schedule)):
//! two workers that tick the same schedule at once cannot both commit, and the workflow each
//! fire starts has an id derived from the schedule and the fire's nominal time, created only
//! if the id is free. A fire time therefore starts at most one workflow; and since the state
//! records each fire time dealt with (started, skipped by the overlap policy, missed past the
//! catch-up window, or found already started), none is dropped without a trace.
//!
//! Cron expressions are parsed by [croner](https://docs.rs/croner) (five fields, or six with
//! seconds first; `L`, `W`, `#`, names of days and months, `@daily` and the like), and time
//! zones are resolved by [jiff](https://docs.rs/jiff) from the time zone database compiled
//! into the binary, so every worker of one build computes the same fire times whatever the
//! machine's own database.
//!
//! **Daylight saving.** A cron expression names wall-clock times in its time zone. An
//! expression whose second, minute and hour fields are each one value (`0 30 2 * * *`) names
//! one time a day, and croner keeps it to one fire a day:
//! - A time that does not exist (02:30 on the night clocks go forward) fires once, at the
//!   first instant after the gap (03:00).
//! - A time that exists twice (01:30 on the night clocks go back) fires once, at its first
//!   occurrence.
//!
//! Any other expression (a wildcard, a list or a range in one of those fields: `0 */15 * * *`,
//! `0 0,30 1 * * *`) fires at the wall-clock times that exist: none in the gap, and both
//! occurrences of a repeated time, since they are different instants.
//!
//! Intervals count real time from the Unix epoch plus an offset, and ignore time zones.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use loom_core::{Payload, TagValue, Tags, Timestamp, WorkflowId};
use serde::{Deserialize, Serialize};

/// How many of its last actions and missed fires a schedule keeps.
pub const RECENT: usize = 10;

/// How many fire times one tick deals with at most; a tick that stops there asks to be run
/// again at once.
pub const TICK_FIRES: usize = 1_000;

/// How often a schedule with a fire waiting for a running workflow to end looks again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// How often a schedule whose spec this build cannot read is looked at again.
pub const UNREADABLE_RETRY: Duration = Duration::from_secs(60);

/// The most fires a schedule holds waiting for running workflows to end (`buffer_all`); a
/// fire past it is skipped.
pub const MAX_BUFFER: usize = 1_000;

/// The most fire times one backfill may ask for.
pub const MAX_BACKFILL: usize = 100_000;

/// The default id pattern of the workflows a schedule starts.
pub const DEFAULT_ID_PATTERN: &str = "{schedule}-{time}";

/// The tag every workflow a schedule starts carries: the schedule's id.
pub const TAG_SCHEDULE: &str = "loom.schedule";

/// The tag every workflow a schedule starts carries: the nominal fire time.
pub const TAG_SCHEDULED_AT: &str = "loom.scheduled_at";

/// When a schedule fires: the union of its cron expressions and intervals, within
/// `[start_at, end_at]`, each fire delayed by up to `jitter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Cron expressions, five fields or six with seconds first, in `timezone`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<String>,
    /// The IANA time zone of the cron expressions (`UTC` by default).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Intervals from the Unix epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<IntervalSpec>,
    /// No fire before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Timestamp>,
    /// No fire after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<Timestamp>,
    /// Each fire is delayed by up to this many milliseconds, by an amount derived from the
    /// schedule and the fire time (the same on every worker), and never past the next fire.
    #[serde(default)]
    pub jitter_ms: u64,
}

fn utc() -> String {
    "UTC".into()
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        ScheduleSpec {
            cron: Vec::new(),
            timezone: utc(),
            intervals: Vec::new(),
            start_at: None,
            end_at: None,
            jitter_ms: 0,
        }
    }
}

/// Fires every `every_ms` milliseconds, at `offset_ms` past each multiple of it since the Unix
/// epoch (an hourly interval with a 5-minute offset fires at 00:05, 01:05, ... UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalSpec {
    /// The period, at least a second.
    pub every_ms: u64,
    /// The offset, less than the period.
    #[serde(default)]
    pub offset_ms: u64,
}

/// The time zone database compiled into this build (jiff's bundled copy of the IANA
/// database), never the machine's own: every worker of one build computes the same fire
/// times, whatever the time zone files of the machine it runs on.
fn zones() -> &'static jiff::tz::TimeZoneDatabase {
    static ZONES: std::sync::OnceLock<jiff::tz::TimeZoneDatabase> = std::sync::OnceLock::new();
    ZONES.get_or_init(jiff::tz::TimeZoneDatabase::bundled)
}

impl fmt::Display for ScheduleSpec {
    /// The spec in one line for people: `cron "0 30 2 * * *" America/New_York, every 1h +5m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { ", " };
            first = false;
            f.write_str(s)
        };
        for c in &self.cron {
            sep(f)?;
            write!(f, "cron {c:?} {}", self.timezone)?;
        }
        for i in &self.intervals {
            sep(f)?;
            write!(f, "every {}", span(i.every_ms))?;
            if i.offset_ms > 0 {
                write!(f, " +{}", span(i.offset_ms))?;
            }
        }
        Ok(())
    }
}

/// Milliseconds in the largest whole unit: `1h`, `90m`, `30s`, `250ms`.
pub fn span(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// A spec whose expressions are parsed and whose time zone is resolved: what computes fire
/// times.
#[derive(Clone, Debug)]
pub struct Calendar {
    crons: Vec<croner::Cron>,
    tz: jiff::tz::TimeZone,
    intervals: Vec<IntervalSpec>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    jitter: u64,
}

impl ScheduleSpec {
    /// The spec made ready to compute fire times, or why it cannot be: an expression that
    /// does not parse, an unknown time zone, an interval under a second or an offset not
    /// under its interval, an end before the start, or nothing at all to fire on.
    pub fn calendar(&self) -> Result<Calendar, String> {
        if self.cron.is_empty() && self.intervals.is_empty() {
            return Err("a schedule needs at least one cron expression or interval".into());
        }
        let tz = zones()
            .get(&self.timezone)
            .map_err(|_| format!("unknown time zone {:?}", self.timezone))?;
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build();
        let mut crons = Vec::new();
        for expr in &self.cron {
            let cron = parser
                .parse(expr)
                .map_err(|e| format!("the cron expression {expr:?} is malformed: {e}"))?;
            crons.push(cron);
        }
        for i in &self.intervals {
            if i.every_ms < 1_000 {
                return Err(format!(
                    "an interval is at least a second, not {} ms",
                    i.every_ms
                ));
            }
            if i.offset_ms >= i.every_ms {
                return Err(format!(
                    "an interval's offset ({} ms) is less than its period ({} ms)",
                    i.offset_ms, i.every_ms
                ));
            }
        }
        if let (Some(s), Some(e)) = (self.start_at, self.end_at)
            && e < s
        {
            return Err(format!(
                "the schedule ends ({}) before it starts ({})",
                rfc3339(e),
                rfc3339(s)
            ));
        }
        Ok(Calendar {
            crons,
            tz,
            intervals: self.intervals.clone(),
            start: self.start_at,
            end: self.end_at,
            jitter: self.jitter_ms,
        })
    }
}

impl Calendar {
    /// The first nominal fire time strictly after `t`, if any.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let floor = match self.start {
            Some(s) if s.as_millis() > t.as_millis() => Timestamp::from_millis(s.as_millis() - 1),
            _ => t,
        };
        let mut best: Option<i64> = None;
        for cron in &self.crons {
            if let Some(ms) = self.cron_after(cron, floor.as_millis()) {
                best = Some(best.map_or(ms, |b| b.min(ms)));
            }
        }
        for i in &self.intervals {
            let every = i64::try_from(i.every_ms).unwrap_or(i64::MAX);
            let offset = i64::try_from(i.offset_ms).unwrap_or(0);
            let k = (floor.as_millis() - offset).div_euclid(every) + 1;
            if let Some(ms) = k.checked_mul(every).and_then(|v| v.checked_add(offset)) {
                best = Some(best.map_or(ms, |b| b.min(ms)));
            }
        }
        let next = Timestamp::from_millis(best?);
        match self.end {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    fn cron_after(&self, cron: &croner::Cron, after_ms: i64) -> Option<i64> {
        // croner counts in whole seconds: start from the second `after_ms` falls in, and
        // step past a match that is not strictly later.
        let mut from = jiff::Timestamp::from_millisecond(after_ms.div_euclid(1000) * 1000).ok()?;
        for _ in 0..2 {
            let zoned = from.to_zoned(self.tz.clone());
            let next = cron.find_next_occurrence(&zoned, false).ok()?;
            let ms = next.timestamp().as_millisecond();
            if ms > after_ms {
                return Some(ms);
            }
            from = next.timestamp();
        }
        None
    }

    /// The nominal fire times after `after` up to and including `until`, at most `limit`.
    pub fn between(&self, after: Timestamp, until: Timestamp, limit: usize) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }

    /// When the fire of `schedule` at nominal time `nominal` is due: `nominal` plus its jitter,
    /// derived from the two, less than `jitter_ms` and less than the gap to the next fire.
    pub fn due_at(&self, schedule: &str, nominal: Timestamp) -> Timestamp {
        if self.jitter == 0 {
            return nominal;
        }
        let gap = self.next_after(nominal).map_or(u64::MAX, |n| {
            (n.as_millis() - nominal.as_millis()).unsigned_abs()
        });
        let bound = self.jitter.min(gap);
        if bound <= 1 {
            return nominal;
        }
        let offset = mix(schedule, nominal) % bound;
        nominal.saturating_add(Duration::from_millis(offset))
    }
}

/// FNV-1a over the schedule's id and the time: a jitter every worker derives alike.
fn mix(schedule: &str, nominal: Timestamp) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule
        .as_bytes()
        .iter()
        .chain(nominal.as_millis().to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A time as RFC 3339 in UTC: whole seconds when it has no milliseconds.
pub fn rfc3339(t: Timestamp) -> String {
    match jiff::Timestamp::from_millisecond(t.as_millis()) {
        Ok(ts) if t.as_millis() % 1000 == 0 => format!("{ts:.0}"),
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => format!("{} ms", t.as_millis()),
    }
}

/// What to do when a fire comes while a workflow the schedule started still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start it (counted as skipped).
    #[default]
    Skip,
    /// Start it once the running one ends; while one fire waits, later ones are skipped.
    BufferOne,
    /// Start each in turn, one after another ends.
    BufferAll,
    /// Start it anyway: runs overlap.
    AllowAll,
    /// Ask the running one to cancel, and start this fire once it has ended; a later fire
    /// replaces a waiting one (which counts as skipped).
    CancelOther,
    /// Terminate the running one and start this fire at once.
    TerminateOther,
}

impl Overlap {
    /// Every policy, by its name.
    pub const ALL: [Overlap; 6] = [
        Overlap::Skip,
        Overlap::BufferOne,
        Overlap::BufferAll,
        Overlap::AllowAll,
        Overlap::CancelOther,
        Overlap::TerminateOther,
    ];

    /// The policy's name, as written in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::BufferAll => "buffer_all",
            Overlap::AllowAll => "allow_all",
            Overlap::CancelOther => "cancel_other",
            Overlap::TerminateOther => "terminate_other",
        }
    }
}

impl std::str::FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.replace('-', "_").to_ascii_lowercase();
        Overlap::ALL
            .into_iter()
            .find(|o| o.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown overlap policy {s:?}: one of {}",
                    Overlap::ALL.map(Overlap::as_str).join(", ")
                )
            })
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The workflow a schedule starts at each fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleAction {
    /// The workflow type's name.
    pub workflow: String,
    /// Its version; `None`: the newest the firing worker knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Its input.
    pub input: Payload,
    /// The started workflows' ids: `{schedule}` becomes the schedule's id and `{time}` the
    /// fire's nominal time in UTC (RFC 3339); `{time}` must be there, so each fire has an
    /// id of its own.
    #[serde(default = "default_pattern")]
    pub id_pattern: String,
    /// Tags each started workflow carries, besides [`TAG_SCHEDULE`] and
    /// [`TAG_SCHEDULED_AT`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

fn default_pattern() -> String {
    DEFAULT_ID_PATTERN.into()
}

impl ScheduleAction {
    /// The id of the workflow started for the fire at `nominal` by schedule `schedule`.
    pub fn workflow_id(&self, schedule: &str, nominal: Timestamp) -> WorkflowId {
        WorkflowId::new(
            self.id_pattern
                .replace("{schedule}", schedule)
                .replace("{time}", &rfc3339(nominal)),
        )
    }

    /// The tags of the workflow started for the fire at `nominal`.
    pub fn tags_for(&self, schedule: &str, nominal: Timestamp) -> Tags {
        let mut tags = self.tags.clone();
        tags.insert(TAG_SCHEDULE.into(), TagValue::Text(schedule.to_owned()));
        tags.insert(TAG_SCHEDULED_AT.into(), TagValue::Time(nominal));
        tags
    }

    /// Why this action cannot be stored, if it cannot: no type name, an id pattern without
    /// `{time}`, or tags a store cannot hold.
    pub fn check(&self) -> Result<(), String> {
        if self.workflow.is_empty() || self.workflow.contains('\0') {
            return Err("a schedule names the workflow type it starts".into());
        }
        if !self.id_pattern.contains("{time}") {
            return Err(format!(
                "the id pattern {:?} has no {{time}}: every fire needs an id of its own",
                self.id_pattern
            ));
        }
        if self.id_pattern.contains('\0') {
            return Err("an id pattern cannot contain a NUL character".into());
        }
        if self.tags.contains_key(TAG_SCHEDULE) || self.tags.contains_key(TAG_SCHEDULED_AT) {
            return Err(format!(
                "the tags {TAG_SCHEDULE} and {TAG_SCHEDULED_AT} are set by the schedule"
            ));
        }
        let mut all = self.tags.clone();
        all.insert(TAG_SCHEDULE.into(), TagValue::Int(0));
        all.insert(TAG_SCHEDULED_AT.into(), TagValue::Int(0));
        loom_core::tags::check_tags(&all)
    }
}

/// How a schedule treats overlaps and downtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulePolicy {
    /// What a fire does while a workflow it started still runs.
    #[serde(default)]
    pub overlap: Overlap,
    /// How old a missed fire may be and still be taken when workers come back; older ones
    /// are recorded as missed.
    pub catchup_window_ms: u64,
}

impl Default for SchedulePolicy {
    fn default() -> Self {
        SchedulePolicy {
            overlap: Overlap::Skip,
            catchup_window_ms: 365 * 24 * 3_600_000,
        }
    }
}

/// Where a fire came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireSource {
    /// The spec.
    Scheduled,
    /// [`trigger`](Schedule::trigger): started by hand, at the time asked.
    Trigger,
    /// [`backfill`](Schedule::backfill): a fire time of the spec in a past range.
    Backfill,
}

/// One fire: its nominal time and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// The nominal time: the workflow id and the `loom.scheduled_at` tag are derived from it.
    pub nominal: Timestamp,
    /// Where it came from.
    pub source: FireSource,
}

/// What became of a fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// A workflow was started.
    Started {
        /// Its id.
        workflow: WorkflowId,
    },
    /// A workflow with the fire's id existed already (a backfill over fires taken before):
    /// nothing was started.
    AlreadyStarted {
        /// Its id.
        workflow: WorkflowId,
    },
    /// The overlap policy skipped it.
    Skipped,
    /// It was older than the catch-up window when a worker came to it.
    Missed,
}

/// One thing a schedule did, kept among its last [`RECENT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The fire.
    pub fire: Fire,
    /// When it was dealt with, by the store's clock.
    pub at: Timestamp,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A backfill still to run: the spec's fire times after `after`, up to `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    /// The fires after this are still to run.
    pub after: Timestamp,
    /// The last fire time to run.
    pub until: Timestamp,
}

/// What a schedule counted since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleCounts {
    /// Workflows started.
    pub started: u64,
    /// Fires skipped by the overlap policy.
    pub skipped: u64,
    /// Fires older than the catch-up window.
    pub missed: u64,
    /// Fires whose workflow id was taken already.
    pub already_started: u64,
    /// Running workflows asked to cancel by `cancel_other`.
    pub cancelled: u64,
    /// Running workflows terminated by `terminate_other`.
    pub terminated: u64,
}

/// Where a schedule stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Nominal fire times of the spec up to and including this have been dealt with.
    pub processed: Timestamp,
    /// Workflows it started that were running when it last looked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<WorkflowId>,
    /// Of those, the ones asked to cancel by `cancel_other`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelling: Vec<WorkflowId>,
    /// Fires waiting for the running workflows to end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffer: Vec<Fire>,
    /// Fires asked for by hand, not yet dealt with (their nominal time is the request's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Timestamp>,
    /// Backfills not yet done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backfills: Vec<Backfill>,
    /// The counts.
    #[serde(default)]
    pub counts: ScheduleCounts,
    /// The last actions, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Action>,
    /// The last missed fire times, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<Timestamp>,
}

/// A schedule as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its id: non-empty text without NUL characters.
    pub id: String,
    /// Bumped by every write; a write names the version it read.
    pub version: u64,
    /// When it fires.
    pub spec: ScheduleSpec,
    /// What it starts.
    pub action: ScheduleAction,
    /// Overlaps and downtime.
    pub policy: SchedulePolicy,
    /// Whether it is paused: its spec's fires are not taken (triggers and backfills are).
    #[serde(default)]
    pub paused: bool,
    /// A note: why it was paused, or anything an operator wrote.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Where it stands.
    pub state: ScheduleState,
    /// When it was created, by the store's clock.
    pub created_at: Timestamp,
    /// When it was last written, by the store's clock.
    pub updated_at: Timestamp,
    /// When a worker must look at it next; `None`: never again unless it is written (paused
    /// with nothing asked of it, or past its end).
    pub wake_at: Option<Timestamp>,
}

/// What a tick wants written besides the schedule: the workflows to start, and the running
/// ones to cancel or terminate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tick {
    /// The fires to start, each with its workflow id.
    pub starts: Vec<(WorkflowId, Fire)>,
    /// Running workflows to ask to cancel.
    pub cancel: Vec<WorkflowId>,
    /// Running workflows to terminate.
    pub terminate: Vec<WorkflowId>,
}

impl Tick {
    /// The write of `schedule` (as ticked, read at version `expected`) with this tick's
    /// starts, each started by the event `started` builds for it, and its cancels and
    /// terminations with reasons that name the schedule and its policy.
    pub fn into_write(
        self,
        schedule: &Schedule,
        expected: u64,
        mut started: impl FnMut(&WorkflowId, &Fire) -> loom_core::Event,
    ) -> ScheduleWrite {
        let reason = format!(
            "schedule {}: overlap policy {}",
            schedule.id, schedule.policy.overlap
        );
        ScheduleWrite {
            id: schedule.id.clone(),
            expected: Some(expected),
            schedule: Some(schedule.clone()),
            starts: self
                .starts
                .iter()
                .map(|(id, fire)| (id.clone(), started(id, fire)))
                .collect(),
            cancel: self
                .cancel
                .into_iter()
                .map(|id| (id, reason.clone()))
                .collect(),
            terminate: self
                .terminate
                .into_iter()
                .map(|id| (id, reason.clone()))
                .collect(),
        }
    }
}

/// What a tick knows of a workflow id it asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdState {
    /// No workflow has the id.
    Free,
    /// A workflow with the id is open.
    Open,
    /// A workflow with the id has ended.
    Closed,
}

/// Checks a note of a pause or an unpause: at most 1,000 bytes, no NUL.
pub fn check_note(note: &str) -> Result<(), String> {
    if note.len() > 1_000 || note.contains('\0') {
        return Err("a note has at most 1000 bytes and no NUL character".into());
    }
    Ok(())
}

/// Checks a schedule id: non-empty, at most 200 bytes, no NUL and no `/` (it is a path
/// segment of the HTTP API), not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err(format!(
            "a schedule id has 1 to 200 bytes, not {}",
            id.len()
        ));
    }
    if id.contains('\0') || id.contains('/') || id == "." || id == ".." {
        return Err(format!(
            "the schedule id {id:?} cannot hold NUL or '/', nor be '.' or '..'"
        ));
    }
    Ok(())
}

impl Schedule {
    /// A new schedule, created at store time `now` and first due at its first fire after
    /// `now`; or why it cannot be.
    pub fn new(
        id: impl Into<String>,
        spec: ScheduleSpec,
        action: ScheduleAction,
        policy: SchedulePolicy,
        paused: bool,
        now: Timestamp,
    ) -> Result<Schedule, String> {
        let id = id.into();
        check_id(&id)?;
        action.check()?;
        let mut s = Schedule {
            id,
            version: 0,
            spec,
            action,
            policy,
            paused,
            note: String::new(),
            state: ScheduleState {
                processed: now,
                ..ScheduleState::default()
            },
            created_at: now,
            updated_at: now,
            wake_at: None,
        };
        s.action.workflow_id(&s.id, now).check()?;
        let calendar = s.spec.calendar()?;
        s.wake_at = s.wake(&calendar, now, false);
        Ok(s)
    }

    /// The next `n` nominal fire times of its spec after `now` (or after what it has dealt
    /// with, if later).
    pub fn upcoming(&self, now: Timestamp, n: usize) -> Vec<Timestamp> {
        match self.spec.calendar() {
            Ok(c) => c.between(now.max(self.state.processed), Timestamp::MAX, n),
            Err(_) => Vec::new(),
        }
    }

    /// Replaces what it fires on, starts and how, at store time `now`: fires of the new spec
    /// are taken from `now` on.
    pub fn update(
        &mut self,
        spec: ScheduleSpec,
        action: ScheduleAction,
        policy: SchedulePolicy,
        now: Timestamp,
    ) -> Result<(), String> {
        action.check()?;
        action.workflow_id(&self.id, now).check()?;
        let calendar = spec.calendar()?;
        let folded = self.fold_due(now);
        self.spec = spec;
        self.action = action;
        self.policy = policy;
        self.state.processed = self.state.processed.max(now);
        self.updated_at = now;
        self.wake_at = self.wake(&calendar, now, folded);
        Ok(())
    }

    /// The fires of the current spec already due at `now` that no tick has dealt with yet
    /// (a worker is about to), moved to the buffer as they are, so that a change of spec or
    /// a pause made after their time does not drop them: the next tick deals with them as
    /// any other. Those already past the catch-up window are recorded as missed here.
    /// Answers whether any was buffered.
    fn fold_due(&mut self, now: Timestamp) -> bool {
        if self.paused {
            return false;
        }
        let Ok(calendar) = self.spec.calendar() else {
            return false;
        };
        let window = Duration::from_millis(self.policy.catchup_window_ms);
        let mut folded = false;
        let mut t = self.state.processed;
        // Every fire whose nominal time has come, jittered or not: a change made within a
        // fire's jitter does not lose it (it starts at the next tick).
        while let Some(next) = calendar.next_after(t) {
            if next > now {
                break;
            }
            let fire = Fire {
                nominal: next,
                source: FireSource::Scheduled,
            };
            let late = calendar.due_at(&self.id, next).saturating_add(window) < now;
            if late || self.state.buffer.len() >= MAX_BUFFER {
                // Past the catch-up window, or more than a buffer's worth at once: missed,
                // and recorded as such.
                self.state.counts.missed += 1;
                push_recent(&mut self.state.missed, next);
                record(&mut self.state, now, fire, Outcome::Missed);
            } else {
                self.state.buffer.push(fire);
                folded = true;
            }
            self.state.processed = next;
            t = next;
        }
        folded
    }

    /// Pauses it (`true`) or lets it run again (`false`) at store time `now`, with a note.
    /// Fires of its spec that fall while it is paused are not taken.
    pub fn set_paused(&mut self, paused: bool, note: String, now: Timestamp) {
        let folded = paused && self.fold_due(now);
        if !paused && self.paused {
            self.state.processed = self.state.processed.max(now);
        }
        self.paused = paused;
        self.note = note;
        self.updated_at = now;
        if let Ok(c) = self.spec.calendar() {
            self.wake_at = self.wake(&c, now, folded);
        }
    }

    /// Asks for a fire now (at store time `now`), under the overlap policy, paused or not.
    pub fn trigger(&mut self, now: Timestamp) {
        self.state.triggers.push(now);
        self.updated_at = now;
        self.wake_at = Some(now);
    }

    /// Asks for the spec's fire times in `[from, to]` (`to` no later than `now`: those still to
    /// come fire on their own), at most [`MAX_BACKFILL`], under the overlap policy and
    /// regardless of the catch-up window; fires whose workflow exists already are recorded as
    /// such.
    pub fn backfill(
        &mut self,
        from: Timestamp,
        to: Timestamp,
        now: Timestamp,
    ) -> Result<(), String> {
        if to < from {
            return Err(format!(
                "a backfill ends ({}) before it starts ({})",
                rfc3339(to),
                rfc3339(from)
            ));
        }
        if from > now {
            return Err(format!(
                "a backfill runs past fire times; {} is still to come",
                rfc3339(from)
            ));
        }
        // Fire times still to come fire on their own.
        let until = to.min(now);
        let after = Timestamp::from_millis(from.as_millis().saturating_sub(1));
        let calendar = self.spec.calendar()?;
        if calendar.between(after, until, MAX_BACKFILL + 1).len() > MAX_BACKFILL {
            return Err(format!(
                "the backfill holds more than {MAX_BACKFILL} fire times: ask for a shorter range"
            ));
        }
        self.state.backfills.push(Backfill { after, until });
        self.updated_at = now;
        self.wake_at = Some(now);
        Ok(())
    }

    /// The workflow ids a tick at `now` may ask about: the running ones and those of the
    /// fires it may start.
    pub fn candidates(&self, now: Timestamp) -> Vec<WorkflowId> {
        let mut ids = self.state.running.clone();
        for f in self.walk(now).fires.into_iter().flatten() {
            ids.push(self.action.workflow_id(&self.id, f.nominal));
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// The fires a tick at `now` deals with, in order: buffered, then the spec's due ones
    /// (`None` for one missed past the catch-up window), then triggers, then backfills, at
    /// most [`TICK_FIRES`] in all, with where the walk leaves `processed` and the backfills.
    fn walk(&self, now: Timestamp) -> Walk {
        let mut walk = Walk {
            fires: self.state.buffer.iter().copied().map(Some).collect(),
            processed: self.state.processed,
            backfills: self.state.backfills.clone(),
            triggers: 0,
            more: false,
            missed: Vec::new(),
        };
        let buffered = walk.fires.len();
        let Ok(calendar) = self.spec.calendar() else {
            return walk;
        };
        let window = Duration::from_millis(self.policy.catchup_window_ms);
        if self.paused {
            walk.processed = walk.processed.max(now);
        } else {
            loop {
                if walk.fires.len() - buffered + walk.missed.len() >= TICK_FIRES {
                    walk.more = true;
                    break;
                }
                let Some(next) = calendar.next_after(walk.processed) else {
                    break;
                };
                if calendar.due_at(&self.id, next) > now {
                    break;
                }
                walk.processed = next;
                if calendar.due_at(&self.id, next).saturating_add(window) < now {
                    walk.missed.push(next);
                    walk.fires.push(None);
                } else {
                    walk.fires.push(Some(Fire {
                        nominal: next,
                        source: FireSource::Scheduled,
                    }));
                }
            }
        }
        for t in &self.state.triggers {
            walk.fires.push(Some(Fire {
                nominal: *t,
                source: FireSource::Trigger,
            }));
            walk.triggers += 1;
        }
        let mut kept = Vec::new();
        for mut b in walk.backfills.drain(..) {
            loop {
                if walk.fires.len() - buffered >= TICK_FIRES {
                    walk.more = true;
                    break;
                }
                match calendar.next_after(b.after) {
                    Some(next) if next <= b.until => {
                        b.after = next;
                        walk.fires.push(Some(Fire {
                            nominal: next,
                            source: FireSource::Backfill,
                        }));
                    }
                    _ => {
                        b.after = b.until;
                        break;
                    }
                }
            }
            if b.after < b.until {
                kept.push(b);
            }
        }
        walk.backfills = kept;
        walk
    }

    /// Deals with every fire due at store time `now`, given what is known of the workflow
    /// ids [`candidates`](Self::candidates) named (`ids`; an id not in it counts as free),
    /// and says what to start, cancel and terminate. The schedule's state moves on as if
    /// all of it were written; write it with the answer in one [`ScheduleWrite`].
    pub fn tick(&mut self, now: Timestamp, ids: &BTreeMap<WorkflowId, IdState>) -> Tick {
        let state_of = |id: &WorkflowId| ids.get(id).copied().unwrap_or(IdState::Free);
        let walk = self.walk(now);
        let mut tick = Tick::default();
        let s = &mut self.state;
        s.running.retain(|id| state_of(id) == IdState::Open);
        s.cancelling.retain(|id| s.running.contains(id));
        s.buffer.clear();
        s.processed = walk.processed;
        s.backfills = walk.backfills;
        s.triggers.drain(..walk.triggers.min(s.triggers.len()));
        let mut missed = walk.missed.into_iter();
        let overlap = self.policy.overlap;
        for fire in walk.fires {
            let Some(fire) = fire else {
                let nominal = missed.next().unwrap_or(now);
                s.counts.missed += 1;
                push_recent(&mut s.missed, nominal);
                record(
                    s,
                    now,
                    Fire {
                        nominal,
                        source: FireSource::Scheduled,
                    },
                    Outcome::Missed,
                );
                continue;
            };
            let start = if s.running.is_empty() {
                true
            } else {
                match overlap {
                    Overlap::Skip => false,
                    Overlap::BufferOne => {
                        if s.buffer.is_empty() {
                            s.buffer.push(fire);
                            continue;
                        }
                        false
                    }
                    Overlap::BufferAll if s.buffer.len() < MAX_BUFFER => {
                        s.buffer.push(fire);
                        continue;
                    }
                    Overlap::BufferAll => false,
                    Overlap::AllowAll => true,
                    Overlap::CancelOther => {
                        for id in &s.running {
                            if !s.cancelling.contains(id) {
                                s.cancelling.push(id.clone());
                                tick.cancel.push(id.clone());
                                s.counts.cancelled += 1;
                            }
                        }
                        if let Some(replaced) = s.buffer.pop() {
                            s.counts.skipped += 1;
                            record(s, now, replaced, Outcome::Skipped);
                        }
                        s.buffer.push(fire);
                        continue;
                    }
                    Overlap::TerminateOther => {
                        for id in s.running.drain(..) {
                            s.counts.terminated += 1;
                            tick.terminate.push(id);
                        }
                        s.cancelling.clear();
                        true
                    }
                }
            };
            if !start {
                s.counts.skipped += 1;
                record(s, now, fire, Outcome::Skipped);
                continue;
            }
            let workflow = self.action.workflow_id(&self.id, fire.nominal);
            let taken = state_of(&workflow) != IdState::Free
                || tick.starts.iter().any(|(id, _)| *id == workflow);
            if taken {
                s.counts.already_started += 1;
                record(s, now, fire, Outcome::AlreadyStarted { workflow });
                continue;
            }
            s.counts.started += 1;
            s.running.push(workflow.clone());
            tick.starts.push((workflow.clone(), fire));
            record(s, now, fire, Outcome::Started { workflow });
        }
        self.updated_at = now;
        match self.spec.calendar() {
            Ok(c) => self.wake_at = self.wake(&c, now, walk.more),
            // A spec this build cannot read (written by another build): looked at again
            // later rather than never, so its triggers and backfills are not stranded.
            Err(_) => self.wake_at = Some(now.saturating_add(UNREADABLE_RETRY)),
        }
        tick
    }

    /// The version a create stores: its creation time in milliseconds times a thousand. A
    /// schedule deleted and created again under the same id so starts above every version
    /// the earlier one reached (it would have needed a thousand writes a millisecond), so a
    /// write read from the earlier one can never pass the version check of the later.
    pub fn first_version(&self) -> u64 {
        u64::try_from(self.created_at.as_millis())
            .unwrap_or(0)
            .max(1)
            .saturating_mul(1_000)
    }

    /// When a worker must look next, at store time `now`.
    fn wake(&self, calendar: &Calendar, now: Timestamp, more: bool) -> Option<Timestamp> {
        let s = &self.state;
        if more || !s.triggers.is_empty() || !s.backfills.is_empty() {
            return Some(now);
        }
        let mut wake = None;
        if !self.paused
            && let Some(next) = calendar.next_after(s.processed)
        {
            wake = Some(calendar.due_at(&self.id, next));
        }
        if !s.buffer.is_empty() {
            let recheck = now.saturating_add(RECHECK);
            wake = Some(wake.map_or(recheck, |w: Timestamp| w.min(recheck)));
        }
        wake
    }
}

struct Walk {
    fires: Vec<Option<Fire>>,
    processed: Timestamp,
    backfills: Vec<Backfill>,
    triggers: usize,
    more: bool,
    missed: Vec<Timestamp>,
}

fn push_recent<T>(list: &mut Vec<T>, item: T) {
    list.push(item);
    if list.len() > RECENT {
        list.remove(0);
    }
}

fn record(s: &mut ScheduleState, now: Timestamp, fire: Fire, outcome: Outcome) {
    push_recent(
        &mut s.recent,
        Action {
            fire,
            at: now,
            outcome,
        },
    );
}

/// A schedule write, checked against the version the caller read: create, update, tick or
/// delete. See [`engine::write_schedule`](crate::engine::write_schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleWrite {
    /// The schedule's id.
    pub id: String,
    /// The version read; `None`: the id must be free (a create).
    pub expected: Option<u64>,
    /// The schedule as it is to be stored (its version is set by the engine); `None`:
    /// delete it.
    pub schedule: Option<Schedule>,
    /// Workflows to start: each id must be free.
    pub starts: Vec<(WorkflowId, loom_core::Event)>,
    /// Workflows to ask to cancel, if still open, with the reason.
    pub cancel: Vec<(WorkflowId, String)>,
    /// Workflows to terminate, if still open, with the reason.
    pub terminate: Vec<(WorkflowId, String)>,
}

/// What [`Storage::due_schedules`](crate::Storage::due_schedules) answers.
#[derive(Clone, Debug, PartialEq)]
pub struct DueSchedules {
    /// The store's time of the read.
    pub now: Timestamp,
    /// Schedules whose `wake_at` has come, earliest first.
    pub due: Vec<Schedule>,
    /// The earliest `wake_at` still to come, if any.
    pub next: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::from_millis(s.parse::<jiff::Timestamp>().unwrap().as_millisecond())
    }

    fn cron(expr: &str, tz: &str) -> Calendar {
        ScheduleSpec {
            cron: vec![expr.into()],
            timezone: tz.into(),
            ..ScheduleSpec::default()
        }
        .calendar()
        .unwrap()
    }

    fn times(c: &Calendar, from: &str, until: &str) -> Vec<String> {
        c.between(at(from), at(until), 100)
            .into_iter()
            .map(rfc3339)
            .collect()
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_fires_once_after_it() {
        let c = cron("0 30 2 * * *", "America/New_York");
        assert_eq!(
            times(&c, "2024-03-09T00:00:00Z", "2024-03-12T00:00:00Z"),
            [
                "2024-03-09T07:30:00Z", // 02:30 EST
                "2024-03-10T07:00:00Z", // 02:30 does not exist: 03:00 EDT
                "2024-03-11T06:30:00Z", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_autumn_overlap_fires_once_and_a_wildcard_hour_twice() {
        let fixed = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            times(&fixed, "2024-11-03T00:00:00Z", "2024-11-04T12:00:00Z"),
            ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]
        );
        let hourly = cron("0 30 * * * *", "America/New_York");
        let fires = times(&hourly, "2024-11-03T04:00:00Z", "2024-11-03T08:00:00Z");
        assert_eq!(
            fires,
            [
                "2024-11-03T04:30:00Z", // 00:30 EDT
                "2024-11-03T05:30:00Z", // 01:30 EDT
                "2024-11-03T06:30:00Z", // 01:30 EST
                "2024-11-03T07:30:00Z", // 02:30 EST
            ]
        );
    }

    #[test]
    fn other_zones_move_by_their_own_rules() {
        // Paris goes forward at 02:00 on the last Sunday of March: 02:30 becomes 03:00 CEST.
        let paris = cron("0 30 2 * * *", "Europe/Paris");
        assert_eq!(
            times(&paris, "2024-03-31T00:00:00Z", "2024-03-31T23:00:00Z"),
            ["2024-03-31T01:00:00Z"]
        );
        // Lord Howe moves by half an hour: on 2024-04-07 01:30-02:00 happens twice.
        let howe = cron("0 45 1 * * *", "Australia/Lord_Howe");
        assert_eq!(
            times(&howe, "2024-04-06T12:00:00Z", "2024-04-07T12:00:00Z"),
            ["2024-04-06T14:45:00Z"]
        );
    }

    #[test]
    fn intervals_count_real_time_whatever_the_zone() {
        let c = ScheduleSpec {
            intervals: vec![IntervalSpec {
                every_ms: 3_600_000,
                offset_ms: 300_000,
            }],
            timezone: "America/New_York".into(),
            ..ScheduleSpec::default()
        }
        .calendar()
        .unwrap();
        let fires = c.between(at("2024-03-10T05:00:00Z"), at("2024-03-10T09:00:00Z"), 10);
        assert_eq!(
            fires.iter().map(|t| rfc3339(*t)).collect::<Vec<_>>(),
            [
                "2024-03-10T05:05:00Z",
                "2024-03-10T06:05:00Z",
                "2024-03-10T07:05:00Z", // 03:05 EDT: the clock jumped, the interval did not
                "2024-03-10T08:05:00Z"
            ]
        );
        assert!(
            fires
                .windows(2)
                .all(|w| w[1].as_millis() - w[0].as_millis() == 3_600_000)
        );
    }

    #[test]
    fn start_end_and_union_bound_the_fires() {
        let c = ScheduleSpec {
            cron: vec!["0 0 * * * *".into()],
            intervals: vec![IntervalSpec {
                every_ms: 1_800_000,
                offset_ms: 0,
            }],
            start_at: Some(at("2024-01-01T01:00:00Z")),
            end_at: Some(at("2024-01-01T02:30:00Z")),
            ..ScheduleSpec::default()
        }
        .calendar()
        .unwrap();
        assert_eq!(
            times(&c, "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"),
            [
                "2024-01-01T01:00:00Z",
                "2024-01-01T01:30:00Z",
                "2024-01-01T02:00:00Z",
                "2024-01-01T02:30:00Z"
            ]
        );
    }

    #[test]
    fn jitter_is_the_same_everywhere_and_stays_before_the_next_fire() {
        let c = ScheduleSpec {
            cron: vec!["* * * * *".into()],
            jitter_ms: 3_600_000,
            ..ScheduleSpec::default()
        }
        .calendar()
        .unwrap();
        let t = at("2024-01-01T00:00:00Z");
        let due = c.due_at("s", t);
        assert_eq!(due, c.due_at("s", t));
        assert!(due >= t && due.as_millis() < t.as_millis() + 60_000);
        let spread: std::collections::BTreeSet<i64> = (0..50)
            .map(|i| c.due_at(&format!("s{i}"), t).as_millis())
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
    }

    #[test]
    fn a_spec_reads_in_one_line() {
        let spec = ScheduleSpec {
            cron: vec!["0 30 2 * * *".into()],
            timezone: "America/New_York".into(),
            intervals: vec![
                IntervalSpec {
                    every_ms: 3_600_000,
                    offset_ms: 300_000,
                },
                IntervalSpec {
                    every_ms: 1_500,
                    offset_ms: 0,
                },
            ],
            ..ScheduleSpec::default()
        };
        assert_eq!(
            spec.to_string(),
            "cron \"0 30 2 * * *\" America/New_York, every 1h +5m, every 1500ms"
        );
        assert_eq!(span(2 * 86_400_000), "2d");
    }

    #[test]
    fn bad_specs_are_refused_with_their_reason() {
        let bad = |spec: ScheduleSpec| spec.calendar().unwrap_err();
        assert!(bad(ScheduleSpec::default()).contains("at least one"));
        let e = bad(ScheduleSpec {
            cron: vec!["61 * * * *".into()],
            ..ScheduleSpec::default()
        });
        assert!(e.contains("\"61 * * * *\" is malformed"), "{e}");
        let e = bad(ScheduleSpec {
            cron: vec!["* * * * *".into()],
            timezone: "Mars/Olympus_Mons".into(),
            ..ScheduleSpec::default()
        });
        assert!(e.contains("unknown time zone"), "{e}");
        let e = bad(ScheduleSpec {
            intervals: vec![IntervalSpec {
                every_ms: 500,
                offset_ms: 0,
            }],
            ..ScheduleSpec::default()
        });
        assert!(e.contains("at least a second"), "{e}");
        let e = bad(ScheduleSpec {
            intervals: vec![IntervalSpec {
                every_ms: 60_000,
                offset_ms: 60_000,
            }],
            ..ScheduleSpec::default()
        });
        assert!(e.contains("offset"), "{e}");
        let e = bad(ScheduleSpec {
            cron: vec!["* * * * *".into()],
            start_at: Some(at("2024-02-01T00:00:00Z")),
            end_at: Some(at("2024-01-01T00:00:00Z")),
            ..ScheduleSpec::default()
        });
        assert!(e.contains("before it starts"), "{e}");
        let action = ScheduleAction {
            workflow: "W".into(),
            version: None,
            input: Payload::NULL,
            id_pattern: "fixed".into(),
            tags: Tags::new(),
        };
        assert!(action.check().unwrap_err().contains("{time}"));
        assert!(check_id("a/b").is_err() && check_id("").is_err() && check_id("..").is_err());
    }

    fn every_minute(overlap: Overlap, window_ms: u64, now: Timestamp) -> Schedule {
        Schedule::new(
            "s",
            ScheduleSpec {
                cron: vec!["0 * * * * *".into()],
                ..ScheduleSpec::default()
            },
            ScheduleAction {
                workflow: "W".into(),
                version: None,
                input: Payload::NULL,
                id_pattern: DEFAULT_ID_PATTERN.into(),
                tags: Tags::new(),
            },
            SchedulePolicy {
                overlap,
                catchup_window_ms: window_ms,
            },
            false,
            now,
        )
        .unwrap()
    }

    fn open(ids: &[&WorkflowId]) -> BTreeMap<WorkflowId, IdState> {
        ids.iter()
            .map(|id| ((*id).clone(), IdState::Open))
            .collect()
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_tick_starts_each_due_fire_once_and_moves_on() {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        assert_eq!(s.wake_at, Some(at("2024-01-01T00:01:00Z")));
        let tick = s.tick(at("2024-01-01T00:03:10Z"), &BTreeMap::new());
        let ids: Vec<&str> = tick.starts.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "s-2024-01-01T00:01:00Z",
                "s-2024-01-01T00:02:00Z",
                "s-2024-01-01T00:03:00Z"
            ]
        );
        assert_eq!(s.state.processed, at("2024-01-01T00:03:00Z"));
        assert_eq!(s.wake_at, Some(at("2024-01-01T00:04:00Z")));
        // Nothing is due again until then.
        let again = s.tick(at("2024-01-01T00:03:20Z"), &open(&[]));
        assert!(again.starts.is_empty());
        assert_eq!(s.state.counts.started, 3);
    }

    /// Three fires come due while the workflow of an earlier one runs.
    fn overlapping(overlap: Overlap) -> (Schedule, Tick, WorkflowId) {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(overlap, HOUR, t0);
        let first = s.tick(at("2024-01-01T00:01:00Z"), &BTreeMap::new());
        let running = first.starts[0].0.clone();
        let tick = s.tick(at("2024-01-01T00:04:00Z"), &open(&[&running]));
        (s, tick, running)
    }

    #[test]
    fn each_overlap_policy_handles_fires_that_come_while_one_runs() {
        let (s, tick, _) = overlapping(Overlap::Skip);
        assert!(tick.starts.is_empty());
        assert_eq!(s.state.counts.skipped, 3);

        let (s, tick, _) = overlapping(Overlap::BufferOne);
        assert!(tick.starts.is_empty());
        assert_eq!(s.state.buffer.len(), 1);
        assert_eq!(s.state.buffer[0].nominal, at("2024-01-01T00:02:00Z"));
        assert_eq!(s.state.counts.skipped, 2);
        assert_eq!(
            s.wake_at,
            Some(at("2024-01-01T00:04:01Z")),
            "looks again soon"
        );

        let (mut s, tick, running) = overlapping(Overlap::BufferAll);
        assert!(tick.starts.is_empty());
        assert_eq!(s.state.buffer.len(), 3);
        // The running one ends: the first buffered fire starts, the others wait for it.
        let mut ids = BTreeMap::new();
        ids.insert(running, IdState::Closed);
        let next = s.tick(at("2024-01-01T00:04:01Z"), &ids);
        assert_eq!(next.starts.len(), 1);
        assert_eq!(next.starts[0].1.nominal, at("2024-01-01T00:02:00Z"));
        assert_eq!(s.state.buffer.len(), 2);

        let (s, tick, _) = overlapping(Overlap::AllowAll);
        assert_eq!(tick.starts.len(), 3);
        assert_eq!(s.state.running.len(), 4);

        let (mut s, tick, running) = overlapping(Overlap::CancelOther);
        assert!(tick.starts.is_empty());
        assert_eq!(tick.cancel, std::slice::from_ref(&running));
        assert_eq!(s.state.buffer.len(), 1);
        assert_eq!(s.state.buffer[0].nominal, at("2024-01-01T00:04:00Z"));
        // Asked once, not again while it winds down.
        let again = s.tick(at("2024-01-01T00:04:01Z"), &open(&[&running]));
        assert!(again.cancel.is_empty() && again.starts.is_empty());
        let mut ids = BTreeMap::new();
        ids.insert(running, IdState::Closed);
        let after = s.tick(at("2024-01-01T00:04:02Z"), &ids);
        assert_eq!(after.starts.len(), 1);
        assert_eq!(after.starts[0].1.nominal, at("2024-01-01T00:04:00Z"));

        let (s, tick, running) = overlapping(Overlap::TerminateOther);
        assert_eq!(tick.terminate.first(), Some(&running));
        assert_eq!(tick.starts.len(), 3);
        assert_eq!(
            s.state.running.len(),
            1,
            "only the last one is left running"
        );
    }

    #[test]
    fn fires_older_than_the_catch_up_window_are_recorded_as_missed() {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(Overlap::AllowAll, 150_000, t0);
        let tick = s.tick(at("2024-01-01T00:10:00Z"), &BTreeMap::new());
        // 00:01 .. 00:07 are older than 2.5 minutes; 00:08, 00:09 and 00:10 are taken.
        assert_eq!(s.state.counts.missed, 7);
        assert_eq!(tick.starts.len(), 3);
        assert_eq!(s.state.missed.first(), Some(&at("2024-01-01T00:01:00Z")));
        assert!(matches!(
            s.state.recent.last().unwrap().outcome,
            Outcome::Started { .. }
        ));
    }

    #[test]
    fn paused_fires_are_not_taken_but_triggers_and_backfills_are() {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        s.set_paused(true, "maintenance".into(), t0);
        assert_eq!(s.wake_at, None);
        s.trigger(at("2024-01-01T00:05:00.250Z"));
        s.backfill(
            at("2023-12-31T23:58:00Z"),
            at("2023-12-31T23:59:00Z"),
            at("2024-01-01T00:05:01Z"),
        )
        .unwrap();
        let tick = s.tick(at("2024-01-01T00:05:02Z"), &BTreeMap::new());
        let ids: Vec<&str> = tick.starts.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "s-2024-01-01T00:05:00.250Z",
                "s-2023-12-31T23:58:00Z",
                "s-2023-12-31T23:59:00Z"
            ]
        );
        assert_eq!(s.wake_at, None);
        s.set_paused(false, String::new(), at("2024-01-01T00:07:30Z"));
        assert_eq!(s.wake_at, Some(at("2024-01-01T00:08:00Z")));
        let tick = s.tick(at("2024-01-01T00:08:00Z"), &BTreeMap::new());
        assert_eq!(tick.starts.len(), 1, "the fires while paused are not taken");
    }

    #[test]
    fn a_fire_due_but_not_yet_ticked_survives_an_update_or_a_pause() {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        // 00:01 is due; before any worker ticks it, the spec changes to hourly.
        let hourly = ScheduleSpec {
            cron: vec!["0 0 * * * *".into()],
            ..ScheduleSpec::default()
        };
        s.update(
            hourly,
            s.action.clone(),
            s.policy,
            at("2024-01-01T00:01:00.100Z"),
        )
        .unwrap();
        assert_eq!(
            s.wake_at,
            Some(at("2024-01-01T00:01:00.100Z")),
            "looked at at once"
        );
        let tick = s.tick(at("2024-01-01T00:01:00.200Z"), &BTreeMap::new());
        assert_eq!(tick.starts.len(), 1);
        assert_eq!(tick.starts[0].1.nominal, at("2024-01-01T00:01:00Z"));
        assert_eq!(
            s.wake_at,
            Some(at("2024-01-01T01:00:00Z")),
            "the new spec from now on"
        );

        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        s.set_paused(true, "now".into(), at("2024-01-01T00:02:00.050Z"));
        let tick = s.tick(at("2024-01-01T00:02:00.060Z"), &BTreeMap::new());
        let nominal: Vec<_> = tick.starts.iter().map(|(_, f)| f.nominal).collect();
        assert_eq!(
            nominal,
            [at("2024-01-01T00:01:00Z"), at("2024-01-01T00:02:00Z")]
        );
        assert_eq!(s.wake_at, None, "paused: nothing more");
    }

    #[test]
    fn the_catch_up_window_counts_from_a_fires_jittered_time() {
        let t0 = at("2024-01-01T00:00:00.500Z");
        let mut s = Schedule::new(
            "j",
            ScheduleSpec {
                cron: vec!["0 0 * * * *".into()],
                jitter_ms: 30 * 60_000,
                ..ScheduleSpec::default()
            },
            every_minute(Overlap::AllowAll, HOUR, t0).action,
            SchedulePolicy {
                overlap: Overlap::AllowAll,
                catchup_window_ms: 60_000,
            },
            false,
            t0,
        )
        .unwrap();
        let calendar = s.spec.calendar().unwrap();
        let nominal = at("2024-01-01T01:00:00Z");
        let due = calendar.due_at("j", nominal);
        // A worker that comes a few seconds after the jittered time takes the fire, however
        // much later than the nominal time that is.
        let tick = s.tick(due.saturating_add(Duration::from_secs(5)), &BTreeMap::new());
        assert_eq!(tick.starts.len(), 1, "{:?}", s.state);
        assert_eq!(s.state.counts.missed, 0);
    }

    #[test]
    fn a_change_within_a_fires_jitter_keeps_the_fire() {
        let t0 = at("2024-01-01T00:00:00.500Z");
        let spec = ScheduleSpec {
            cron: vec!["0 0 * * * *".into()],
            jitter_ms: 59 * 60_000,
            ..ScheduleSpec::default()
        };
        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        s.update(spec.clone(), s.action.clone(), s.policy, t0)
            .unwrap();
        let nominal = at("2024-01-01T01:00:00Z");
        let due = s.spec.calendar().unwrap().due_at(&s.id, nominal);
        assert!(
            due > nominal.saturating_add(Duration::from_secs(60)),
            "{due}"
        );
        // The input changes after the nominal time, before the jittered one.
        let mut action = s.action.clone();
        action.input = Payload::encode(&2).unwrap();
        s.update(
            spec,
            action,
            s.policy,
            nominal.saturating_add(Duration::from_secs(30)),
        )
        .unwrap();
        let tick = s.tick(
            nominal.saturating_add(Duration::from_secs(31)),
            &BTreeMap::new(),
        );
        assert_eq!(tick.starts.len(), 1);
        assert_eq!(tick.starts[0].1.nominal, nominal);
    }

    #[test]
    fn a_backfill_stops_at_now_and_is_bounded() {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        let now = at("2024-01-01T00:05:30Z");
        assert!(
            s.backfill(at("2024-01-01T00:06:00Z"), at("2024-01-02T00:00:00Z"), now)
                .unwrap_err()
                .contains("still to come")
        );
        s.backfill(at("2024-01-01T00:04:00Z"), at("2024-01-02T00:00:00Z"), now)
            .unwrap();
        assert_eq!(s.state.backfills[0].until, now);
        let mut busy = Schedule::new(
            "busy",
            ScheduleSpec {
                cron: vec!["* * * * * *".into()],
                ..ScheduleSpec::default()
            },
            s.action.clone(),
            s.policy,
            false,
            t0,
        )
        .unwrap();
        let e = busy
            .backfill(at("2023-01-01T00:00:00Z"), at("2023-12-31T00:00:00Z"), now)
            .unwrap_err();
        assert!(e.contains("more than 100000"), "{e}");
        assert!(busy.state.backfills.is_empty());
    }

    #[test]
    fn a_buffer_holds_at_most_its_limit() {
        let t0 = at("2024-01-01T00:00:00.500Z");
        let mut s = Schedule::new(
            "b",
            ScheduleSpec {
                cron: vec!["* * * * * *".into()],
                ..ScheduleSpec::default()
            },
            every_minute(Overlap::BufferAll, HOUR, t0).action,
            SchedulePolicy {
                overlap: Overlap::BufferAll,
                catchup_window_ms: 3 * HOUR,
            },
            false,
            t0,
        )
        .unwrap();
        let first = s.tick(at("2024-01-01T00:00:01Z"), &BTreeMap::new());
        let running = open(&[&first.starts[0].0]);
        let mut now = at("2024-01-01T00:00:01Z");
        for _ in 0..3 {
            now = now.saturating_add(Duration::from_secs(1_000));
            s.tick(now, &running);
            assert!(s.state.buffer.len() <= MAX_BUFFER);
        }
        assert_eq!(s.state.buffer.len(), MAX_BUFFER);
        assert!(s.state.counts.skipped > 0);
        assert_eq!(
            s.state.processed, now,
            "the walk went on past a full buffer"
        );
    }

    #[test]
    fn a_schedule_created_again_starts_above_every_version_of_the_one_before() {
        let t0 = at("2024-01-01T00:00:00Z");
        let earlier = every_minute(Overlap::Skip, HOUR, t0);
        let later = every_minute(Overlap::Skip, HOUR, at("2024-01-01T00:00:00.001Z"));
        assert!(later.first_version() >= earlier.first_version() + 1_000);
    }

    #[test]
    fn a_backfill_over_fires_already_taken_starts_nothing_twice() {
        let t0 = at("2024-01-01T00:00:30Z");
        let mut s = every_minute(Overlap::AllowAll, HOUR, t0);
        let first = s.tick(at("2024-01-01T00:02:00Z"), &BTreeMap::new());
        let mut ids: BTreeMap<WorkflowId, IdState> = first
            .starts
            .iter()
            .map(|(id, _)| (id.clone(), IdState::Closed))
            .collect();
        s.backfill(
            at("2024-01-01T00:00:00Z"),
            at("2024-01-01T00:02:00Z"),
            at("2024-01-01T00:02:01Z"),
        )
        .unwrap();
        ids.insert(WorkflowId::new("s-2024-01-01T00:00:00Z"), IdState::Free);
        let tick = s.tick(at("2024-01-01T00:02:02Z"), &ids);
        assert_eq!(tick.starts.len(), 1);
        assert_eq!(tick.starts[0].0.as_str(), "s-2024-01-01T00:00:00Z");
        assert_eq!(s.state.counts.already_started, 2);
    }
}
