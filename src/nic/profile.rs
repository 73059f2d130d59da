//! NIC profiles: the declarative YAML an operator applies with `tickmesh nic apply -f`.
//! Parsing is strict (an unknown field is an error naming it, with its line) and keeps the
//! order the operator wrote within each map, because order can matter (turning `tx` off
//! drops `tso` in the kernel). A profile compiles into `plan::Step`s; it never touches
//! the host itself.
//!
//! Order of steps: host (hugepages, busy_poll, busy_read), then each device in the order
//! written: channels, rings, coalesce, features, rss, rps, xps, irq_affinity — queue
//! counts first, since RSS, masks and IRQs refer to queues.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::genl::{CHANNEL_NAMES, COALESCE, RING_NAMES};
use super::host::{self, parse_cpu_list, QueueMask, Sysctl};
use super::plan::{RssWant, Step};
use super::NicError;

/// The shipped profiles, by name.
pub const SHIPPED: &[(&str, &str)] = &[(
    "low-latency",
    include_str!("../../profiles/low-latency.yaml"),
)];

/// A map that keeps the order of its keys as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<Key, V>()? {
                    if v.iter().any(|(k2, _): &(String, V)| *k2 == k.0) {
                        return Err(serde::de::Error::custom(format!(
                            "`{}` is given twice",
                            k.0
                        )));
                    }
                    v.push((k.0, val));
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// Map keys may be written as numbers (queue indices) or strings.
struct Key(String);
impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum K {
            N(u64),
            S(String),
        }
        Ok(Key(match K::deserialize(d)? {
            K::N(n) => n.to_string(),
            K::S(s) => s,
        }))
    }
}

/// `on`/`off`/`true`/`false`, or a number (coalescing values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Num(u64),
    Text(String),
}

impl Value {
    fn on_off(&self, what: &str) -> Result<bool, NicError> {
        match self {
            Value::Bool(b) => Ok(*b),
            Value::Text(s) => super::features::parse_on_off(s)
                .ok_or_else(|| NicError::Invalid(format!("{what}: `{s}` is not on or off"))),
            Value::Num(n) => Err(NicError::Invalid(format!("{what}: `{n}` is not on or off"))),
        }
    }
    fn u32(&self, what: &str) -> Result<u32, NicError> {
        match self {
            Value::Num(n) => u32::try_from(*n)
                .map_err(|_| NicError::Invalid(format!("{what}: {n} is out of range"))),
            Value::Bool(b) => Ok(u32::from(*b)),
            Value::Text(s) => match super::features::parse_on_off(s) {
                Some(b) => Ok(u32::from(b)),
                None => s
                    .parse()
                    .map_err(|_| NicError::Invalid(format!("{what}: `{s}` is not a number"))),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Free text for people; ignored.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub host: Host,
    /// Interface name → settings; `"*"` stands for each device given with `--dev`.
    #[serde(default)]
    pub devices: Ordered<Device>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub busy_poll: Option<u32>,
    pub busy_read: Option<u32>,
    /// Page size (`2M`, `1G`) → number of pages.
    #[serde(default)]
    pub hugepages: Ordered<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Leave out (and say so) settings this device's driver does not support at all —
    /// e.g. coalescing on veth — instead of failing. Bad values still fail.
    #[serde(default)]
    pub skip_unsupported: bool,
    #[serde(default)]
    pub channels: Ordered<u32>,
    #[serde(default)]
    pub rings: Ordered<u32>,
    #[serde(default)]
    pub coalesce: Ordered<Value>,
    #[serde(default)]
    pub features: Ordered<Value>,
    pub rss: Option<Rss>,
    /// rx queue → CPU list.
    #[serde(default)]
    pub rps: Ordered<String>,
    /// tx queue → CPU list.
    #[serde(default)]
    pub xps: Ordered<String>,
    /// queue → CPU list for the IRQs of that queue.
    #[serde(default)]
    pub irq_affinity: Ordered<String>,
}

/// Exactly one of: `equal: N`, `weights: [W0, W1, ...]`, `default: true`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rss {
    pub equal: Option<u32>,
    pub weights: Option<Vec<u32>>,
    pub default: Option<bool>,
}

/// Parse profile text; errors carry the field path and line.
pub fn parse(text: &str) -> Result<Profile, NicError> {
    serde_yaml::from_str(text).map_err(|e| NicError::Invalid(format!("profile: {e}")))
}

/// Load a profile from a file, or a shipped one by name (`low-latency`).
pub fn load(path: &str) -> Result<Profile, NicError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => match SHIPPED.iter().find(|(n, _)| *n == path) {
            Some((_, t)) => t.to_string(),
            None => return Err(NicError::Invalid(format!("reading profile {path}: {e}"))),
        },
    };
    parse(&text).map_err(|e| NicError::Invalid(format!("{path}: {e}")))
}

fn counts(
    dev: &str,
    what: &str,
    names: &[&str; 4],
    m: &Ordered<u32>,
) -> Result<[Option<u32>; 4], NicError> {
    let mut out = [None; 4];
    for (k, v) in &m.0 {
        let i = names.iter().position(|n| n == k).ok_or_else(|| {
            NicError::Invalid(format!(
                "devices.{dev}.{what}: unknown field `{k}` (one of {})",
                names.join(", ")
            ))
        })?;
        out[i] = Some(*v);
    }
    Ok(out)
}

fn queue_map(
    dev: &str,
    what: &str,
    m: &Ordered<String>,
) -> Result<Vec<(u32, host::Cpus)>, NicError> {
    m.0.iter()
        .map(|(q, cpus)| {
            let qi: u32 = q.parse().map_err(|_| {
                NicError::Invalid(format!("devices.{dev}.{what}: `{q}` is not a queue number"))
            })?;
            let c = parse_cpu_list(cpus)
                .map_err(|e| NicError::Invalid(format!("devices.{dev}.{what}.{q}: {e}")))?;
            Ok((qi, c))
        })
        .collect()
}

impl Profile {
    /// The steps, in order. `devs` replaces a `"*"` device entry.
    pub fn steps(&self, devs: &[String]) -> Result<Vec<Step>, NicError> {
        Ok(self.plan(devs)?.into_iter().map(|(s, _)| s).collect())
    }

    /// The steps, each with whether it may be left out when the driver lacks it.
    pub fn plan(&self, devs: &[String]) -> Result<Vec<(Step, bool)>, NicError> {
        let mut out = Vec::new();
        for (size, n) in &self.host.hugepages.0 {
            let kb = host::parse_page_size(size)
                .map_err(|e| NicError::Invalid(format!("host.hugepages: {e}")))?;
            out.push((Step::Hugepages { kb, count: *n }, false));
        }
        if let Some(v) = self.host.busy_poll {
            out.push((
                Step::Sysctl {
                    which: Sysctl::BusyPoll,
                    value: v,
                },
                false,
            ));
        }
        if let Some(v) = self.host.busy_read {
            out.push((
                Step::Sysctl {
                    which: Sysctl::BusyRead,
                    value: v,
                },
                false,
            ));
        }
        for (name, d) in &self.devices.0 {
            let targets: Vec<String> = if name == "*" {
                if devs.is_empty() {
                    return Err(NicError::Invalid(
                        "the profile has a `*` device entry: name the devices with --dev".into(),
                    ));
                }
                devs.to_vec()
            } else {
                vec![name.clone()]
            };
            for dev in &targets {
                super::check_ifname(dev)?;
                let mut steps = Vec::new();
                d.push_steps(dev, &mut steps)?;
                out.extend(steps.into_iter().map(|s| (s, d.skip_unsupported)));
            }
        }
        Ok(out)
    }
}

impl Device {
    fn push_steps(&self, dev: &str, out: &mut Vec<Step>) -> Result<(), NicError> {
        if !self.channels.0.is_empty() {
            let want = counts(dev, "channels", &CHANNEL_NAMES, &self.channels)?;
            out.push(Step::Channels {
                dev: dev.into(),
                want,
            });
        }
        if !self.rings.0.is_empty() {
            let want = counts(dev, "rings", &RING_NAMES, &self.rings)?;
            out.push(Step::Rings {
                dev: dev.into(),
                want,
            });
        }
        if !self.coalesce.0.is_empty() {
            let mut want = Vec::new();
            for (k, v) in &self.coalesce.0 {
                if !COALESCE.iter().any(|(n, _, _)| n == k) {
                    return Err(NicError::Invalid(format!(
                        "devices.{dev}.coalesce: unknown parameter `{k}` (ethtool -C names: rx-usecs, adaptive-rx, ...)"
                    )));
                }
                want.push((k.clone(), v.u32(&format!("devices.{dev}.coalesce.{k}"))?));
            }
            out.push(Step::Coalesce {
                dev: dev.into(),
                want,
            });
        }
        for (k, v) in &self.features.0 {
            let on = v.on_off(&format!("devices.{dev}.features.{k}"))?;
            out.push(Step::Feature {
                dev: dev.into(),
                name: k.clone(),
                on,
            });
        }
        if let Some(r) = &self.rss {
            let want = match (r.equal, &r.weights, r.default) {
                (Some(n), None, None) => RssWant::Equal(n),
                (None, Some(w), None) => RssWant::Weights(w.clone()),
                (None, None, Some(true)) => RssWant::Default,
                _ => {
                    return Err(NicError::Invalid(format!(
                        "devices.{dev}.rss: give exactly one of `equal: N`, `weights: [..]`, `default: true`"
                    )))
                }
            };
            out.push(Step::Rss {
                dev: dev.into(),
                want,
            });
        }
        for (kind, m) in [(QueueMask::Rps, &self.rps), (QueueMask::Xps, &self.xps)] {
            for (queue, cpus) in queue_map(dev, kind.name(), m)? {
                out.push(Step::Queue {
                    dev: dev.into(),
                    kind,
                    queue,
                    cpus,
                });
            }
        }
        for (queue, cpus) in queue_map(dev, "irq_affinity", &self.irq_affinity)? {
            out.push(Step::IrqAffinity {
                dev: dev.into(),
                queue,
                cpus,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_low_latency_profile_parses_and_compiles() {
        let p = parse(SHIPPED[0].1).unwrap();
        let steps = p.steps(&["eth0".into()]).unwrap();
        assert!(steps.iter().any(|s| matches!(
            s,
            Step::Sysctl {
                which: Sysctl::BusyPoll,
                value: 50
            }
        )));
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Feature { name, on: false, .. } if name == "gro")));
        assert!(p.steps(&[]).unwrap_err().to_string().contains("--dev"));
    }

    #[test]
    fn order_is_kept_as_written() {
        let p = parse("devices:\n  v0:\n    features: {tx: off, tso: on, gro: off}\n").unwrap();
        let names: Vec<String> = p
            .steps(&[])
            .unwrap()
            .into_iter()
            .map(|s| match s {
                Step::Feature { name, .. } => name,
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, ["tx", "tso", "gro"]);
    }

    #[test]
    fn typos_and_bad_values_are_named_with_their_line() {
        for (text, needles) in [
            (
                "devices:\n  v0:\n    featurs: {gro: off}\n",
                &["unknown field `featurs`", "line 3"][..],
            ),
            (
                "host:\n  busy_pol: 50\n",
                &["unknown field `busy_pol`", "line 2"],
            ),
            ("hots: {}\n", &["unknown field `hots`"]),
            ("host:\n  busy_poll: -1\n", &["busy_poll", "line 2"]),
            (
                "devices:\n  v0:\n    features: {gro: off, gro: on}\n",
                &["given twice"],
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e}");
            }
        }
        for (text, needle) in [
            (
                "devices:\n  v0:\n    channels: {rxx: 2}\n",
                "unknown field `rxx`",
            ),
            (
                "devices:\n  v0:\n    coalesce: {rx-usec: 0}\n",
                "unknown parameter `rx-usec`",
            ),
            (
                "devices:\n  v0:\n    features: {gro: maybe}\n",
                "`maybe` is not on or off",
            ),
            ("devices:\n  v0:\n    rps: {0: \"0-x\"}\n", "rps.0"),
            (
                "devices:\n  v0:\n    rps: {a: \"0\"}\n",
                "`a` is not a queue number",
            ),
            ("host:\n  hugepages: {3T: 1}\n", "host.hugepages"),
            (
                "devices:\n  \"bad/name\": {}\n",
                "not a valid interface name",
            ),
            (
                "devices:\n  v0:\n    rss: {equal: 2, weights: [1]}\n",
                "exactly one of",
            ),
        ] {
            let e = parse(text)
                .and_then(|p| p.steps(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn mutated_profiles_never_panic() {
        let mut rng = crate::nic::TestRng(0x5eed_1234_abcd_0001);
        let base = SHIPPED[0].1.as_bytes();
        for _ in 0..2000 {
            let text = String::from_utf8_lossy(&rng.mutate(base)).into_owned();
            if let Ok(p) = parse(&text) {
                let _ = p.steps(&["eth0".into()]);
            }
        }
    }
}
