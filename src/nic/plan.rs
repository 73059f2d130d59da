//! Changes as steps, and the transaction that runs them.
//!
//! A `Step` is one setting on one device (or on the host). Running a plan: every step is
//! checked first (device exists, feature known and changeable, value in range) so bad
//! input changes nothing; then each step records the value it is about to replace, writes,
//! and reads back to verify. When a step fails, every recorded value is written back,
//! newest first, and the error names the step, the cause, and what the rollback did.
//! A dry run reads only and prints the diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::genl::{Ethtool, CHANNEL_NAMES, RING_NAMES};
use super::host::{self, format_cpu_list, Cpus, QueueMask, Sysctl};
use super::{features, require_device, sys, NicError};

/// Kernel connections shared by the steps of one run.
#[derive(Default)]
pub struct Ctx {
    et: Option<Ethtool>,
}

impl Ctx {
    pub fn et(&mut self) -> Result<&mut Ethtool, NicError> {
        if self.et.is_none() {
            self.et = Some(Ethtool::open()?);
        }
        // Just set above when it was None.
        Ok(self.et.as_mut().expect("opened above"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RssWant {
    /// Spread over the first N rx queues equally.
    Equal(u32),
    Weights(Vec<u32>),
    /// The driver's default table.
    Default,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Feature {
        dev: String,
        name: String,
        on: bool,
    },
    Channels {
        dev: String,
        want: [Option<u32>; 4],
    },
    Rings {
        dev: String,
        want: [Option<u32>; 4],
    },
    Coalesce {
        dev: String,
        want: Vec<(String, u32)>,
    },
    Rss {
        dev: String,
        want: RssWant,
    },
    Queue {
        dev: String,
        kind: QueueMask,
        queue: u32,
        cpus: Cpus,
    },
    IrqAffinity {
        dev: String,
        queue: u32,
        cpus: Cpus,
    },
    Sysctl {
        which: Sysctl,
        value: u32,
    },
    Hugepages {
        kb: u64,
        count: u64,
    },
}

/// What a step replaced, enough to put it back.
#[derive(Debug, Clone, PartialEq)]
pub enum Prev {
    /// The wanted state of each kernel feature bit.
    Features(Vec<(String, bool)>),
    Counts([Option<u32>; 4]),
    Coalesce(Vec<(String, u32)>),
    Rss(Vec<u32>),
    Cpus(Cpus),
    Irqs(Vec<(u32, Cpus)>),
    Num(u64),
}

fn counts_text(names: &[&str; 4], v: &[Option<u32>; 4], only: &[Option<u32>; 4]) -> String {
    (0..4)
        .filter(|&i| only[i].is_some())
        .map(|i| {
            format!(
                "{}={}",
                names[i],
                v[i].map_or("n/a".into(), |x| x.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl Step {
    /// How the step reads in diffs and errors.
    pub fn label(&self) -> String {
        match self {
            Step::Feature { dev, name, on } => format!("{dev} feature {name}={}", on_off(*on)),
            Step::Channels { dev, want } => {
                format!("{dev} channels {}", counts_text(&CHANNEL_NAMES, want, want))
            }
            Step::Rings { dev, want } => {
                format!("{dev} rings {}", counts_text(&RING_NAMES, want, want))
            }
            Step::Coalesce { dev, want } => format!(
                "{dev} coalesce {}",
                want.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Step::Rss { dev, want } => format!("{dev} rss {}", rss_text(want)),
            Step::Queue {
                dev,
                kind,
                queue,
                cpus,
            } => {
                format!(
                    "{dev} {} queue {queue} cpus={}",
                    kind.name(),
                    format_cpu_list(cpus)
                )
            }
            Step::IrqAffinity { dev, queue, cpus } => {
                format!(
                    "{dev} irq-affinity queue {queue} cpus={}",
                    format_cpu_list(cpus)
                )
            }
            Step::Sysctl { which, value } => format!("host {}={value}", which.name()),
            Step::Hugepages { kb, count } => {
                format!("host hugepages {}={count}", host::page_size_name(*kb))
            }
        }
    }

    /// The error's text without a leading `DEV: ` that the label already says.
    fn unprefixed(&self, e: &NicError) -> String {
        let t = e.to_string();
        match self.dev() {
            Some(d) => t
                .strip_prefix(&format!("{d}: "))
                .map(String::from)
                .unwrap_or(t),
            None => t,
        }
    }

    fn dev(&self) -> Option<&str> {
        match self {
            Step::Feature { dev, .. }
            | Step::Channels { dev, .. }
            | Step::Rings { dev, .. }
            | Step::Coalesce { dev, .. }
            | Step::Rss { dev, .. }
            | Step::Queue { dev, .. }
            | Step::IrqAffinity { dev, .. } => Some(dev),
            Step::Sysctl { .. } | Step::Hugepages { .. } => None,
        }
    }

    /// Validate against the device as it is now, changing nothing.
    pub fn check(&self, cx: &mut Ctx) -> Result<(), NicError> {
        if let Some(dev) = self.dev() {
            require_device(dev)?;
        }
        match self {
            Step::Feature { dev, name, on } => {
                let f = cx.et()?.features(dev)?;
                // A fixed feature already in the asked state is fine; otherwise it must
                // have changeable bits.
                if !features::resolve(dev, name, &f)?
                    .iter()
                    .all(|m| m.active == *on)
                {
                    features::bits_to_set(dev, name, &f)?;
                }
            }
            Step::Channels { dev, want } => {
                let c = cx
                    .et()?
                    .channels(dev)
                    .map_err(|e| unsupported(dev, "channels", e))?;
                check_counts(dev, "channels", &CHANNEL_NAMES, want, &c.max)?;
            }
            Step::Rings { dev, want } => {
                let r = cx
                    .et()?
                    .rings(dev)
                    .map_err(|e| unsupported(dev, "ring sizes", e))?;
                check_counts(dev, "rings", &RING_NAMES, want, &r.max)?;
            }
            Step::Coalesce { dev, want } => {
                let have = cx
                    .et()?
                    .coalesce(dev)
                    .map_err(|e| unsupported(dev, "interrupt coalescing", e))?;
                for (k, _) in want {
                    if !have.contains_key(k) {
                        return Err(NicError::Invalid(format!(
                            "{dev}: the driver does not support coalescing parameter `{k}` (it has: {})",
                            have.keys().cloned().collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
            }
            Step::Rss { dev, want } => {
                let r = sys::rss(dev).map_err(|e| unsupported(dev, "RSS", e))?;
                let queues = match want {
                    RssWant::Equal(n) => *n as usize,
                    RssWant::Weights(w) => w.len(),
                    RssWant::Default => 0,
                };
                if queues > r.rx_rings as usize {
                    return Err(NicError::Invalid(format!(
                        "{dev}: RSS over {queues} queues, but the device has {} rx queues",
                        r.rx_rings
                    )));
                }
                if matches!(want, RssWant::Equal(0)) {
                    return Err(NicError::Invalid(format!(
                        "{dev}: rss equal needs at least 1 queue"
                    )));
                }
            }
            Step::Queue {
                dev,
                kind,
                queue,
                cpus,
            } => {
                host::read_queue_mask(dev, *kind, *queue)?;
                host::check_cpus(cpus)?;
            }
            Step::IrqAffinity { dev, queue, cpus } => {
                host::queue_irqs(dev, *queue)?;
                host::check_cpus(cpus)?;
                if cpus.is_empty() {
                    return Err(NicError::Invalid("an IRQ needs at least one CPU".into()));
                }
            }
            Step::Sysctl { which, .. } => {
                which.read()?;
            }
            Step::Hugepages { kb, .. } => {
                host::read_hugepages(*kb)?;
            }
        }
        Ok(())
    }

    /// Read the current value: what to record, and how it reads in a diff.
    pub fn read(&self, cx: &mut Ctx) -> Result<(Prev, String), NicError> {
        Ok(match self {
            Step::Feature { dev, name, .. } => {
                let f = cx.et()?.features(dev)?;
                let all = features::resolve(dev, name, &f)?;
                let changeable: Vec<_> = all.iter().copied().filter(|x| x.changeable).collect();
                let members = if changeable.is_empty() {
                    all
                } else {
                    changeable
                };
                let on = members.iter().filter(|x| x.active).count();
                let text = if on == members.len() {
                    "on"
                } else if on == 0 {
                    "off"
                } else {
                    "partly on"
                };
                (
                    Prev::Features(members.iter().map(|x| (x.name.clone(), x.wanted)).collect()),
                    text.into(),
                )
            }
            Step::Channels { dev, want } => {
                let c = cx.et()?.channels(dev)?;
                (
                    Prev::Counts(c.count),
                    counts_text(&CHANNEL_NAMES, &c.count, want),
                )
            }
            Step::Rings { dev, want } => {
                let r = cx.et()?.rings(dev)?;
                (
                    Prev::Counts(r.count),
                    counts_text(&RING_NAMES, &r.count, want),
                )
            }
            Step::Coalesce { dev, want } => {
                let have = cx.et()?.coalesce(dev)?;
                let prev: Vec<(String, u32)> = want
                    .iter()
                    .filter_map(|(k, _)| have.get(k).map(|v| (k.clone(), *v)))
                    .collect();
                let text = prev
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                (Prev::Coalesce(prev), text)
            }
            Step::Rss { dev, .. } => {
                let r = sys::rss(dev)?;
                let text = summarize_table(&r.indirection);
                (Prev::Rss(r.indirection), text)
            }
            Step::Queue {
                dev, kind, queue, ..
            } => {
                let c = host::read_queue_mask(dev, *kind, *queue)?;
                let text = format!("cpus={}", format_cpu_list(&c));
                (Prev::Cpus(c), text)
            }
            Step::IrqAffinity { dev, queue, .. } => {
                let mut v = Vec::new();
                for irq in host::queue_irqs(dev, *queue)? {
                    v.push((irq, host::read_irq_affinity(irq)?));
                }
                let text = v
                    .iter()
                    .map(|(i, c)| format!("irq {i} cpus={}", format_cpu_list(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                (Prev::Irqs(v), text)
            }
            Step::Sysctl { which, .. } => {
                let v = which.read()?;
                (Prev::Num(u64::from(v)), v.to_string())
            }
            Step::Hugepages { kb, .. } => {
                let v = host::read_hugepages(*kb)?;
                (Prev::Num(v), v.to_string())
            }
        })
    }

    /// Whether the current value already is what the step asks for.
    pub fn satisfied(&self, cx: &mut Ctx, prev: &Prev) -> Result<bool, NicError> {
        Ok(match (self, prev) {
            (Step::Feature { dev, on, .. }, Prev::Features(bits)) => {
                let f = cx.et()?.features(dev)?;
                bits.iter()
                    .all(|(n, _)| f.iter().any(|x| &x.name == n && x.active == *on))
            }
            (Step::Channels { want, .. } | Step::Rings { want, .. }, Prev::Counts(c)) => {
                (0..4).all(|i| want[i].is_none() || want[i] == c[i])
            }
            (Step::Coalesce { want, .. }, Prev::Coalesce(c)) => want.iter().all(|(k, v)| {
                c.iter().any(|(k2, v2)| {
                    k == k2 && (v == v2 || is_bool_param(k) && (*v != 0) == (*v2 != 0))
                })
            }),
            (Step::Rss { dev, want }, Prev::Rss(t)) => match want {
                RssWant::Default => false,
                w => desired_table(dev, w, t.len())? == *t,
            },
            (Step::Queue { cpus, .. }, Prev::Cpus(c)) => cpus == c,
            (Step::IrqAffinity { cpus, .. }, Prev::Irqs(v)) => v.iter().all(|(_, c)| c == cpus),
            (Step::Sysctl { value, .. }, Prev::Num(n)) => u64::from(*value) == *n,
            (Step::Hugepages { count, .. }, Prev::Num(n)) => count == n,
            _ => false,
        })
    }

    /// How the desired value reads in a diff.
    pub fn desired_text(&self) -> String {
        match self {
            Step::Feature { on, .. } => on_off(*on).into(),
            Step::Channels { want, .. } => counts_text(&CHANNEL_NAMES, want, want),
            Step::Rings { want, .. } => counts_text(&RING_NAMES, want, want),
            Step::Coalesce { want, .. } => want
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            Step::Rss { want, .. } => rss_text(want),
            Step::Queue { cpus, .. } | Step::IrqAffinity { cpus, .. } => {
                format!("cpus={}", format_cpu_list(cpus))
            }
            Step::Sysctl { value, .. } => value.to_string(),
            Step::Hugepages { count, .. } => count.to_string(),
        }
    }

    /// Write the desired value.
    pub fn write(&self, cx: &mut Ctx) -> Result<(), NicError> {
        match self {
            Step::Feature { dev, name, on } => {
                let f = cx.et()?.features(dev)?;
                let bits: Vec<(String, bool)> = features::bits_to_set(dev, name, &f)?
                    .into_iter()
                    .map(|b| (b, *on))
                    .collect();
                cx.et()?.set_features(dev, &bits)
            }
            Step::Channels { dev, want } => cx.et()?.set_channels(dev, *want),
            Step::Rings { dev, want } => cx.et()?.set_rings(dev, *want),
            Step::Coalesce { dev, want } => cx.et()?.set_coalesce(dev, want),
            Step::Rss { dev, want } => {
                let size = sys::rss(dev)?.indirection.len();
                let table = match want {
                    RssWant::Default => Vec::new(),
                    w => desired_table(dev, w, size)?,
                };
                sys::set_rss_indirection(dev, &table)
            }
            Step::Queue {
                dev,
                kind,
                queue,
                cpus,
            } => host::write_queue_mask(dev, *kind, *queue, cpus),
            Step::IrqAffinity { dev, queue, cpus } => {
                for irq in host::queue_irqs(dev, *queue)? {
                    host::write_irq_affinity(irq, cpus)?;
                }
                Ok(())
            }
            Step::Sysctl { which, value } => which.write(*value),
            Step::Hugepages { kb, count } => host::write_hugepages(*kb, *count),
        }
    }

    /// Read back after a write; a value the kernel did not take is an error.
    pub fn verify(&self, cx: &mut Ctx) -> Result<(), NicError> {
        if matches!(
            self,
            Step::Rss {
                want: RssWant::Default,
                ..
            }
        ) {
            return Ok(());
        }
        let (now, text) = self.read(cx)?;
        if self.satisfied(cx, &now)? {
            return Ok(());
        }
        let why = match self {
            Step::Feature { on: true, .. } => {
                " (a feature it depends on is off, e.g. tx-checksumming or scatter-gather for tso)"
            }
            _ => "",
        };
        Err(NicError::Io(format!(
            "the kernel kept it at {text} after the write{why}"
        )))
    }

    /// Put back what `read` recorded.
    pub fn restore(&self, cx: &mut Ctx, prev: &Prev) -> Result<(), NicError> {
        match (self, prev) {
            (Step::Feature { dev, .. }, Prev::Features(bits)) => cx.et()?.set_features(dev, bits),
            (Step::Channels { dev, want }, Prev::Counts(c)) => {
                cx.et()?.set_channels(dev, only(want, c))
            }
            (Step::Rings { dev, want }, Prev::Counts(c)) => cx.et()?.set_rings(dev, only(want, c)),
            (Step::Coalesce { dev, .. }, Prev::Coalesce(c)) => cx.et()?.set_coalesce(dev, c),
            (Step::Rss { dev, .. }, Prev::Rss(t)) => sys::set_rss_indirection(dev, t),
            (
                Step::Queue {
                    dev, kind, queue, ..
                },
                Prev::Cpus(c),
            ) => host::write_queue_mask(dev, *kind, *queue, c),
            (Step::IrqAffinity { .. }, Prev::Irqs(v)) => {
                for (irq, c) in v {
                    host::write_irq_affinity(*irq, c)?;
                }
                Ok(())
            }
            (Step::Sysctl { which, .. }, Prev::Num(n)) => which.write(*n as u32),
            (Step::Hugepages { kb, .. }, Prev::Num(n)) => host::write_hugepages(*kb, *n),
            _ => Err(NicError::Io(format!(
                "{}: recorded value of the wrong kind",
                self.label()
            ))),
        }
    }
}

fn only(want: &[Option<u32>; 4], prev: &[Option<u32>; 4]) -> [Option<u32>; 4] {
    let mut out = [None; 4];
    for i in 0..4 {
        if want[i].is_some() {
            out[i] = prev[i];
        }
    }
    out
}

fn is_bool_param(k: &str) -> bool {
    super::genl::COALESCE.iter().any(|(n, _, b)| *n == k && *b)
}

fn unsupported(dev: &str, what: &str, e: NicError) -> NicError {
    if e.is_unsupported() {
        NicError::Unsupported(format!(
            "{dev}: the driver does not support changing {what}"
        ))
    } else {
        e
    }
}

fn check_counts(
    dev: &str,
    what: &str,
    names: &[&str; 4],
    want: &[Option<u32>; 4],
    max: &[Option<u32>; 4],
) -> Result<(), NicError> {
    for i in 0..4 {
        let Some(v) = want[i] else { continue };
        match max[i] {
            None => {
                return Err(NicError::Invalid(format!(
                    "{dev} has no `{}` {what} to set (it reports: {})",
                    names[i],
                    (0..4)
                        .filter(|&j| max[j].is_some())
                        .map(|j| names[j])
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Some(m) if v > m => {
                return Err(NicError::Invalid(format!(
                    "{dev} {what} {}={v} is out of range (maximum {m})",
                    names[i]
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

fn rss_text(w: &RssWant) -> String {
    match w {
        RssWant::Equal(n) => format!("equal {n}"),
        RssWant::Weights(v) => format!(
            "weights {}",
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        ),
        RssWant::Default => "default".into(),
    }
}

fn desired_table(dev: &str, w: &RssWant, size: usize) -> Result<Vec<u32>, NicError> {
    let weights = match w {
        RssWant::Equal(n) => vec![1; *n as usize],
        RssWant::Weights(v) => v.clone(),
        RssWant::Default => return Ok(Vec::new()),
    };
    sys::weighted_table(size, &weights).map_err(|e| NicError::Invalid(format!("{dev}: {e}")))
}

/// `queue: entries` of an indirection table, for diffs.
pub fn summarize_table(t: &[u32]) -> String {
    let mut per: BTreeMap<u32, usize> = BTreeMap::new();
    for q in t {
        *per.entry(*q).or_default() += 1;
    }
    per.iter()
        .map(|(q, n)| format!("q{q}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// === running a plan ===

/// Leave out the optional steps whose driver lacks the operation altogether; the notes
/// say what was left out. Any other check failure stays for `apply`/`diff` to report.
pub fn drop_unsupported(items: Vec<(Step, bool)>, cx: &mut Ctx) -> (Vec<Step>, Vec<String>) {
    let mut keep = Vec::new();
    let mut notes = Vec::new();
    for (s, optional) in items {
        if optional {
            if let Err(e @ NicError::Unsupported(_)) = s.check(cx) {
                notes.push(format!("skipped {}: {e}", s.label()));
                continue;
            }
        }
        keep.push(s);
    }
    (keep, notes)
}

/// The diff a dry run prints: `~` will change, `=` already so, `!` cannot be read.
pub fn diff(steps: &[Step], cx: &mut Ctx) -> (String, usize) {
    let mut out = String::new();
    let mut changes = 0;
    for s in steps {
        let line = match s.check(cx).and_then(|_| s.read(cx)) {
            Err(e) => format!("! {}: {e}\n", s.label()),
            Ok((prev, now)) => match s.satisfied(cx, &prev) {
                Ok(true) => format!("= {} (already)\n", s.label()),
                Ok(false) => {
                    changes += 1;
                    format!("~ {}: {now} -> {}\n", s.label(), s.desired_text())
                }
                Err(e) => format!("! {}: {e}\n", s.label()),
            },
        };
        out.push_str(&line);
    }
    (out, changes)
}

/// Apply the steps as one transaction. Returns a line per change made.
pub fn apply(steps: &[Step], cx: &mut Ctx) -> anyhow::Result<Vec<String>> {
    let n = steps.len();
    for (i, s) in steps.iter().enumerate() {
        s.check(cx).map_err(|e| {
            anyhow::anyhow!(
                "step {} of {n} ({}): {}; nothing was changed",
                i + 1,
                s.label(),
                s.unprefixed(&e)
            )
        })?;
    }
    let mut done: Vec<(usize, Prev)> = Vec::new();
    let mut log = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let result = (|| -> Result<Option<String>, NicError> {
            let (prev, now) = s.read(cx)?;
            if s.satisfied(cx, &prev)? {
                return Ok(None);
            }
            // Recorded before the write: a write that fails halfway is undone too.
            done.push((i, prev));
            if let Err(e) = s.write(cx) {
                // A write the kernel refused outright (e.g. no privilege) changed nothing:
                // nothing of this step to restore.
                if matches!(s.read(cx), Ok((now, _)) if Some(&now) == done.last().map(|(_, p)| p)) {
                    done.pop();
                }
                return Err(e);
            }
            s.verify(cx)?;
            Ok(Some(format!(
                "{}: {now} -> {}",
                s.label(),
                s.desired_text()
            )))
        })();
        match result {
            Ok(Some(line)) => log.push(line),
            Ok(None) => {}
            Err(e) => {
                let undone = rollback(steps, &done, cx);
                anyhow::bail!(
                    "step {} of {n} ({}) failed: {}; {undone}",
                    i + 1,
                    s.label(),
                    s.unprefixed(&e)
                );
            }
        }
    }
    Ok(log)
}

/// Put back every recorded value, newest first. Says what it did.
fn rollback(steps: &[Step], done: &[(usize, Prev)], cx: &mut Ctx) -> String {
    let mut failed = String::new();
    for (i, prev) in done.iter().rev() {
        if let Err(e) = steps[*i].restore(cx, prev) {
            let _ = write!(failed, "; could not restore {}: {e}", steps[*i].label());
        }
    }
    if done.is_empty() {
        "nothing was changed".into()
    } else if failed.is_empty() {
        format!(
            "rolled back {} change(s); the previous settings are restored",
            done.len()
        )
    } else {
        format!("ROLLBACK INCOMPLETE{failed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_range_checked_with_the_item_named() {
        let max = [Some(4), Some(4), None, None];
        let e = check_counts(
            "v0",
            "channels",
            &CHANNEL_NAMES,
            &[Some(64), None, None, None],
            &max,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rx=64") && e.contains("maximum 4"), "{e}");
        let e = check_counts(
            "v0",
            "channels",
            &CHANNEL_NAMES,
            &[None, None, None, Some(2)],
            &max,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`combined`") && e.contains("rx, tx"), "{e}");
        assert!(check_counts(
            "v0",
            "channels",
            &CHANNEL_NAMES,
            &[Some(2), Some(4), None, None],
            &max
        )
        .is_ok());
    }

    #[test]
    fn restore_touches_only_the_kinds_the_step_set() {
        assert_eq!(
            only(
                &[Some(1), None, None, None],
                &[Some(4), Some(4), None, None]
            ),
            [Some(4), None, None, None]
        );
    }

    #[test]
    fn table_summary_counts_entries_per_queue() {
        assert_eq!(summarize_table(&[0, 0, 1, 1, 1]), "q0:2 q1:3");
    }
}
