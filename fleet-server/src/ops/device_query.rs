//! Which devices a list shows, and in what order (pure): the conditions a device is in, and the
//! filter, sort and page of the dashboard's devices page, all from the records and a clock.
//!
//! Invariants:
//! - A device is exactly one of online and offline; the other conditions come on top.
//! - The page is cut after filtering and sorting, so page N of a filter is the same whatever
//!   the page size of earlier requests; ties sort by id, so the order is total and stable.
//! - The filter and sort round-trip through the URL ([`DeviceQuery::to_query`]), so every list
//!   has a stable address and every number on the overview links to the list behind it.

use std::fmt;

use fleet_proto::report::{UpdatePhase, UpdateResult};
use fleet_proto::UnixMillis;

use crate::devices::DeviceSummary;
use crate::groups::Selector;

/// How long without a word before a device counts as not seen.
pub const STALE_AFTER_MS: u64 = 24 * 3600 * 1000;
/// Rows per page unless asked otherwise, and at most.
pub const DEFAULT_PER_PAGE: usize = 50;
/// The most rows one page holds (the page's HTML is bounded by it, not by the fleet).
pub const MAX_PER_PAGE: usize = 500;
/// The longest text search or selector taken from a URL.
pub const MAX_QUERY_TEXT: usize = 256;

/// A condition a device can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// Its retained status says online.
    Online,
    /// Not online.
    Offline,
    /// Has a desired state it has not applied yet, or is working on one.
    Updating,
    /// Its last update of the desired generation failed, was rolled back or was refused.
    Failed,
    /// Held on a release by a pin that still holds.
    Pinned,
    /// Not heard from in [`STALE_AFTER_MS`].
    Stale,
}

impl Condition {
    /// Every condition, in the order the overview shows them.
    pub const ALL: [Condition; 6] = [
        Condition::Online,
        Condition::Offline,
        Condition::Updating,
        Condition::Failed,
        Condition::Pinned,
        Condition::Stale,
    ];

    /// The name in URLs (`?state=`) and on the page.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Online => "online",
            Condition::Offline => "offline",
            Condition::Updating => "updating",
            Condition::Failed => "failed",
            Condition::Pinned => "pinned",
            Condition::Stale => "not-seen-24h",
        }
    }

    /// How the page says it.
    pub fn label(self) -> &'static str {
        match self {
            Condition::Online => "Online",
            Condition::Offline => "Offline",
            Condition::Updating => "Updating",
            Condition::Failed => "Failed",
            Condition::Pinned => "Pinned",
            Condition::Stale => "Not seen in 24 h",
        }
    }

    fn parse(text: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.name() == text)
    }

    /// Whether `device` is in this condition at `now`.
    pub fn holds(self, device: &DeviceSummary, now: UnixMillis) -> bool {
        match self {
            Condition::Online => device.online,
            Condition::Offline => !device.online,
            Condition::Updating => updating(device),
            Condition::Failed => failed(device),
            Condition::Pinned => device.pin.as_ref().is_some_and(|p| p.holds(now)),
            Condition::Stale => now.0.saturating_sub(device.last_seen.0) > STALE_AFTER_MS,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn updating(device: &DeviceSummary) -> bool {
    let working = device.last_report.as_ref().is_some_and(|r| r.update.phase != UpdatePhase::Idle);
    working || (device.desired_generation > device.accepted_generation && !failed(device))
}

fn failed(device: &DeviceSummary) -> bool {
    let Some(outcome) = device.last_report.as_ref().and_then(|r| r.update.last_outcome.as_ref())
    else {
        return false;
    };
    outcome.generation >= device.desired_generation
        && !matches!(outcome.result, UpdateResult::Applied)
}

/// Why a device's last update failed, in one line, if it did.
pub fn failure_reason(device: &DeviceSummary) -> Option<&str> {
    if !failed(device) {
        return None;
    }
    let outcome = device.last_report.as_ref()?.update.last_outcome.as_ref()?;
    match &outcome.result {
        UpdateResult::Applied => None,
        UpdateResult::RolledBack { reason, .. }
        | UpdateResult::Failed { reason }
        | UpdateResult::Rejected { reason } => Some(reason),
    }
}

/// What a devices list sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// Device id.
    #[default]
    Id,
    /// When it was last heard from.
    LastSeen,
    /// The release in force.
    Release,
    /// The agent version.
    Agent,
}

impl SortKey {
    /// The name in URLs (`?sort=`).
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::LastSeen => "last-seen",
            SortKey::Release => "release",
            SortKey::Agent => "agent",
        }
    }

    fn parse(text: &str) -> Option<SortKey> {
        [SortKey::Id, SortKey::LastSeen, SortKey::Release, SortKey::Agent]
            .into_iter()
            .find(|k| k.name() == text)
    }
}

/// The filter, sort and page of a devices list, as read from a URL's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Text found in the id, a label (key or value) or the notes.
    pub text: String,
    /// A label selector (`k=v,k!=v,k,!k`), as typed.
    pub selector: String,
    /// A group's name: its selector applies too.
    pub group: String,
    /// The release in force.
    pub release: String,
    /// The agent version.
    pub agent: String,
    /// A condition.
    pub condition: Option<Condition>,
    /// What it sorts by.
    pub sort: SortKey,
    /// Newest/largest first.
    pub descending: bool,
    /// Which page, from 1.
    pub page: usize,
    /// Rows per page.
    pub per_page: usize,
}

/// Everything, by id, the first page: what `/devices` shows without a query.
impl Default for DeviceQuery {
    fn default() -> DeviceQuery {
        DeviceQuery {
            text: String::new(),
            selector: String::new(),
            group: String::new(),
            release: String::new(),
            agent: String::new(),
            condition: None,
            sort: SortKey::Id,
            descending: false,
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        }
    }
}

/// A query parameter that does not parse, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub param: &'static str,
    /// Why.
    pub reason: String,
}

impl DeviceQuery {
    /// Reads the URL's `(name, value)` pairs. Unknown names are ignored (links from older
    /// pages keep working); known ones must parse.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<DeviceQuery, QueryError> {
        let mut q = DeviceQuery::default();
        for (name, value) in pairs {
            let value = value.trim();
            let text = |param: &'static str| {
                if value.len() > MAX_QUERY_TEXT {
                    Err(QueryError { param, reason: format!("at most {MAX_QUERY_TEXT} bytes") })
                } else {
                    Ok(value.to_owned())
                }
            };
            match name {
                "q" => q.text = text("q")?,
                "selector" => q.selector = text("selector")?,
                "group" => q.group = text("group")?,
                "release" => q.release = text("release")?,
                "agent" => q.agent = text("agent")?,
                "state" if value.is_empty() => q.condition = None,
                "state" => {
                    q.condition = Some(Condition::parse(value).ok_or_else(|| QueryError {
                        param: "state",
                        reason: format!(
                            "{value:?} is not one of {}",
                            Condition::ALL.map(Condition::name).join(", ")
                        ),
                    })?)
                }
                "sort" => {
                    q.sort = SortKey::parse(value).ok_or_else(|| QueryError {
                        param: "sort",
                        reason: format!("{value:?} is not one of id, last-seen, release, agent"),
                    })?
                }
                "dir" => q.descending = value == "desc",
                "page" => q.page = number("page", value, 1, usize::MAX)?,
                "per" => q.per_page = number("per", value, 1, MAX_PER_PAGE)?,
                _ => {}
            }
        }
        Ok(q)
    }

    /// The query string that reads back as this query (defaults left out), without `?`.
    pub fn to_query(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("q", self.text.as_str()),
            ("selector", &self.selector),
            ("group", &self.group),
            ("release", &self.release),
            ("agent", &self.agent),
            ("state", self.condition.map_or("", Condition::name)),
        ] {
            if !value.is_empty() {
                out.append_pair(name, value);
            }
        }
        if self.sort != SortKey::Id {
            out.append_pair("sort", self.sort.name());
        }
        if self.descending {
            out.append_pair("dir", "desc");
        }
        if self.per_page != DEFAULT_PER_PAGE {
            out.append_pair("per", &self.per_page.to_string());
        }
        if self.page > 1 {
            out.append_pair("page", &self.page.to_string());
        }
        out.finish()
    }

    /// The same filter on another page.
    pub fn with_page(&self, page: usize) -> DeviceQuery {
        DeviceQuery { page, ..self.clone() }
    }

    /// The same filter, first page, sorted by `key` (flipping the direction when it already
    /// sorts by it).
    pub fn sorted_by(&self, key: SortKey) -> DeviceQuery {
        let descending = self.sort == key && !self.descending;
        DeviceQuery { sort: key, descending, page: 1, ..self.clone() }
    }

    /// Whether it filters at all.
    pub fn filters(&self) -> bool {
        !(self.text.is_empty()
            && self.selector.is_empty()
            && self.group.is_empty()
            && self.release.is_empty()
            && self.agent.is_empty()
            && self.condition.is_none())
    }
}

fn number(param: &'static str, value: &str, min: usize, max: usize) -> Result<usize, QueryError> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(QueryError { param, reason: format!("{value:?} is not a number {min}..={max}") }),
    }
}

/// A query made ready to run: the selector parsed and the group's selector added.
#[derive(Debug)]
pub struct Matcher<'q> {
    query: &'q DeviceQuery,
    selector: Selector,
    text: String,
    now: UnixMillis,
}

impl<'q> Matcher<'q> {
    /// `group_selector` is the named group's (the caller looked it up: a missing group is a
    /// not-found, not an empty list).
    pub fn new(
        query: &'q DeviceQuery,
        group_selector: Option<Selector>,
        now: UnixMillis,
    ) -> Result<Matcher<'q>, QueryError> {
        let mut selector = group_selector.unwrap_or(Selector(Vec::new()));
        if !query.selector.is_empty() {
            let extra = Selector::parse(&query.selector)
                .map_err(|reason| QueryError { param: "selector", reason })?;
            selector.0.extend(extra.0);
        }
        Ok(Matcher { query, selector, text: query.text.to_lowercase(), now })
    }

    /// Whether `device` is in the list.
    pub fn matches(&self, device: &DeviceSummary) -> bool {
        let q = self.query;
        (q.release.is_empty() || device.release.as_ref().is_some_and(|r| r.as_str() == q.release))
            && (q.agent.is_empty() || device.agent_version.as_deref() == Some(q.agent.as_str()))
            && q.condition.is_none_or(|c| c.holds(device, self.now))
            && self.selector.matches(&device.labels)
            && (self.text.is_empty() || mentions(device, &self.text))
    }
}

fn mentions(device: &DeviceSummary, lowercase: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(lowercase);
    has(device.id.as_str())
        || device.labels.iter().any(|(k, v)| has(k) || has(v))
        || has(&device.notes)
}

/// One page of a devices list.
#[derive(Debug)]
pub struct DevicePage {
    /// The rows of this page.
    pub rows: Vec<DeviceSummary>,
    /// How many devices match in all.
    pub matched: usize,
    /// How many pages there are (at least 1).
    pub pages: usize,
}

/// Filters, sorts and cuts one page out of `devices`.
pub fn page(devices: Vec<DeviceSummary>, matcher: &Matcher<'_>) -> DevicePage {
    let q = matcher.query;
    let mut rows: Vec<DeviceSummary> = devices.into_iter().filter(|d| matcher.matches(d)).collect();
    let matched = rows.len();
    rows.sort_by(|a, b| {
        let by = match q.sort {
            SortKey::Id => std::cmp::Ordering::Equal,
            SortKey::LastSeen => a.last_seen.cmp(&b.last_seen),
            SortKey::Release => a.release.cmp(&b.release),
            SortKey::Agent => a.agent_version.cmp(&b.agent_version),
        }
        .then_with(|| a.id.cmp(&b.id));
        if q.descending {
            by.reverse()
        } else {
            by
        }
    });
    let pages = matched.div_ceil(q.per_page).max(1);
    let start = (q.page.min(pages) - 1) * q.per_page;
    let rows = rows.into_iter().skip(start).take(q.per_page).collect();
    DevicePage { rows, matched, pages }
}

/// How many devices are in each condition (the overview's counts).
pub fn census(devices: &[DeviceSummary], now: UnixMillis) -> Vec<(Condition, usize)> {
    Condition::ALL
        .into_iter()
        .map(|c| (c, devices.iter().filter(|d| c.holds(d, now)).count()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleet_proto::DeviceId;

    use crate::devices::DeviceRecord;

    use super::*;

    fn record(id: &str, labels: &[(&str, &str)], last_seen: u64) -> DeviceRecord {
        let mut d = DeviceRecord::bare(DeviceId::new(id).unwrap(), UnixMillis(last_seen));
        d.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>();
        d
    }

    fn device(id: &str, labels: &[(&str, &str)], last_seen: u64) -> DeviceSummary {
        DeviceSummary::from(&record(id, labels, last_seen))
    }

    fn query(pairs: &[(&str, &str)]) -> DeviceQuery {
        DeviceQuery::from_pairs(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn a_query_reads_back_from_its_own_url() {
        let q = query(&[
            ("q", "arm & co"),
            ("selector", "site=lab,!retired"),
            ("state", "failed"),
            ("sort", "last-seen"),
            ("dir", "desc"),
            ("page", "3"),
            ("per", "20"),
            ("unknown", "ignored"),
        ]);
        let url = q.to_query();
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(url.as_bytes()).into_owned().collect();
        let again =
            DeviceQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(again, q);
        assert_eq!(query(&[]).to_query(), "", "defaults are left out");
        assert_eq!(DeviceQuery::default(), query(&[]), "a link built from the default reads back");
        let linked = DeviceQuery { group: "lab".into(), ..DeviceQuery::default() };
        assert_eq!(linked.to_query(), "group=lab");
        assert!(!query(&[]).filters());
    }

    #[test]
    fn bad_parameters_are_named() {
        let err =
            |pairs: &[(&str, &str)]| DeviceQuery::from_pairs(pairs.iter().copied()).unwrap_err();
        assert_eq!(err(&[("state", "sleepy")]).param, "state");
        assert_eq!(err(&[("per", "501")]).param, "per");
        assert_eq!(err(&[("page", "0")]).param, "page");
        assert_eq!(err(&[("sort", "colour")]).param, "sort");
        assert_eq!(err(&[("q", &"x".repeat(MAX_QUERY_TEXT + 1))]).param, "q");
        let q = query(&[("selector", "site=lab,Bad Key=1")]);
        assert_eq!(Matcher::new(&q, None, UnixMillis(0)).unwrap_err().param, "selector");
    }

    #[test]
    fn conditions_follow_the_records() {
        let now = UnixMillis(10 * STALE_AFTER_MS);
        let mut d = device("r1", &[], now.0 - 1000);
        d.online = true;
        assert!(Condition::Online.holds(&d, now) && !Condition::Offline.holds(&d, now));
        assert!(!Condition::Stale.holds(&d, now));
        d.last_seen = UnixMillis(now.0 - STALE_AFTER_MS - 1);
        assert!(Condition::Stale.holds(&d, now));
        d.desired_generation = 2;
        d.accepted_generation = 1;
        assert!(Condition::Updating.holds(&d, now) && !Condition::Failed.holds(&d, now));
        let mut report = fleet_proto::samples::report();
        report.update.phase = UpdatePhase::Idle;
        report.update.last_outcome = Some(fleet_proto::report::UpdateOutcome {
            generation: 2,
            finished_at: now,
            result: UpdateResult::RolledBack {
                reason: "web unhealthy".into(),
                service: None,
                log_tail: vec![],
            },
        });
        d.last_report = Some(crate::devices::ReportSummary { update: report.update });
        assert!(Condition::Failed.holds(&d, now) && !Condition::Updating.holds(&d, now));
        assert_eq!(failure_reason(&d), Some("web unhealthy"));
        // A newer desired state: the old failure no longer counts, the device is updating.
        d.desired_generation = 3;
        assert!(!Condition::Failed.holds(&d, now) && Condition::Updating.holds(&d, now));
    }

    #[test]
    fn pages_cut_after_filter_and_sort_with_ties_by_id() {
        let devices: Vec<DeviceSummary> = (0..25)
            .map(|i| {
                let site = if i % 2 == 0 { "lab" } else { "depot" };
                device(&format!("r{i:02}"), &[("site", site)], 1000 + (i % 3))
            })
            .collect();
        let q = query(&[("selector", "site=lab"), ("sort", "last-seen"), ("per", "5")]);
        let matcher = Matcher::new(&q, None, UnixMillis(2000)).unwrap();
        let first = page(devices.clone(), &matcher);
        assert_eq!((first.matched, first.pages), (13, 3));
        let ids: Vec<&str> = first.rows.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["r00", "r06", "r12", "r18", "r24"], "last_seen 1000, then by id");
        // Past the end: the last page.
        let q = q.with_page(9);
        let last = page(devices.clone(), &Matcher::new(&q, None, UnixMillis(2000)).unwrap());
        assert_eq!(last.rows.len(), 3);
        // Text search over ids, labels and notes, case-insensitive.
        let q = query(&[("q", "DEPOT")]);
        let found = page(devices, &Matcher::new(&q, None, UnixMillis(2000)).unwrap());
        assert_eq!(found.matched, 12);
    }

    #[test]
    fn a_group_and_a_selector_both_apply() {
        let devices = vec![
            device("a", &[("site", "lab"), ("arm", "ur5")], 0),
            device("b", &[("site", "lab")], 0),
        ];
        let q = query(&[("selector", "arm")]);
        let group = Selector::parse("site=lab").unwrap();
        let found = page(devices, &Matcher::new(&q, Some(group), UnixMillis(0)).unwrap());
        assert_eq!(found.rows.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a"]);
    }
}
