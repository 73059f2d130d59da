//! The `tickmesh nic` command line: argument types and the words of `nic set`, turned into
//! plan steps (or, for ntuple rules, one direct call). No kernel access of its own.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::genl::{CHANNEL_NAMES, COALESCE, RING_NAMES};
use super::host::{self, parse_cpu_list, QueueMask, Sysctl};
use super::plan::{self, Ctx, RssWant, Step};
use super::{features, profile, show, sys, NicError};

#[derive(Args, Debug, Clone)]
pub struct NicArgs {
    #[command(subcommand)]
    pub command: NicCommand,
    /// How to reach ports owned by DPDK (`dpdk:NAME` or `dpdk:N` as the device).
    #[command(flatten, next_help_heading = "DPDK ports (dpdk:NAME)")]
    pub dpdk: super::dpdk::DpdkAccess,
}

#[derive(Subcommand, Debug, Clone)]
pub enum NicCommand {
    /// Show a device (or every device) and the host's NIC-related settings.
    Show {
        /// Interface name, or a DPDK port as dpdk:NAME / dpdk:PORT-ID [default: every interface but lo]
        dev: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change settings of one device, all or nothing:
    ///   FEATURE=on|off ... (gro, tso, tx, rx-gro, tx-tcp-segmentation, ...),
    ///   channels rx=N tx=N combined=N, rings rx=N tx=N,
    ///   coalesce adaptive-rx off rx-usecs 0, rss equal N | rss weights W... | rss default,
    ///   flow add tcp4 dst-ip A dst-port P action Q | flow del LOC,
    ///   irq-affinity QUEUE=CPUS..., rps QUEUE=CPUS..., xps QUEUE=CPUS...
    /// On a DPDK port (dpdk:NAME): FEATURE=on|off (tso, tx, ..., rx:NAME/tx:NAME),
    ///   channels rx=N tx=N, rings rx=N tx=N,
    ///   rss equal N | weights W... | default | hash F,... | key HEX,
    ///   flow add tcp4 dst-ip A dst-port P action Q | flow del ID
    #[command(verbatim_doc_comment)]
    Set {
        dev: String,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// Set the host's busy-polling sysctls (net.core.busy_poll, net.core.busy_read), in µs.
    BusyPoll {
        /// net.core.busy_poll
        usecs: u32,
        /// net.core.busy_read [default: same as busy_poll]
        #[arg(long)]
        read: Option<u32>,
    },
    /// Reserve N hugepages of one size.
    Hugepages {
        count: u64,
        #[arg(long, default_value = "2M")]
        size: String,
    },
    /// Bind a device (interface or PCI address) to a driver, normally vfio-pci,
    /// remembering its previous driver.
    Bind { target: String, driver: String },
    /// Return a device bound with `bind` to the driver it had.
    Unbind { target: String },
    /// Apply a profile (a file, or a shipped one by name: low-latency), transactionally.
    Apply {
        #[arg(long = "filename", short = 'f', value_name = "FILE|NAME")]
        file: String,
        /// Print the diff against the current state and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Devices that the profile's "*" entry applies to.
        #[arg(long = "dev", value_name = "DEV")]
        devs: Vec<String>,
    },
    /// Print a shipped profile (to copy and edit).
    Profile {
        #[arg(default_value = "low-latency")]
        name: String,
    },
}

pub fn run(args: &NicArgs) -> anyhow::Result<()> {
    let mut cx = Ctx::default();
    match &args.command {
        NicCommand::Show { dev, json } => {
            if let Some(port) = dev.as_deref().and_then(super::dpdk::port_of) {
                return super::dpdk::run(port, &[], *json, &args.dpdk);
            }
            let mut r = show::report(&mut cx, dev.as_deref())?;
            let mut dpdk_note = None;
            if dev.is_none() {
                match super::dpdk::engine_ports(&args.dpdk.dpdk_socket) {
                    Ok(p) => r.dpdk_ports = p,
                    Err(e) => dpdk_note = Some(format!("DPDK ports: {e}")),
                }
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", show::text(&r));
                for p in &r.dpdk_ports {
                    print!("{}", super::dpdk::text(p));
                }
            }
            if let Some(n) = dpdk_note {
                eprintln!("{n}");
            }
        }
        NicCommand::Set { dev, words } => {
            if let Some(port) = super::dpdk::port_of(dev) {
                return super::dpdk::run(port, words, false, &args.dpdk);
            }
            if words.first().map(String::as_str) == Some("flow") {
                return flow(dev, &words[1..]);
            }
            let steps = parse_set(dev, words)?;
            report(plan::apply(&steps, &mut cx)?);
        }
        NicCommand::BusyPoll { usecs, read } => {
            let steps = vec![
                Step::Sysctl {
                    which: Sysctl::BusyPoll,
                    value: *usecs,
                },
                Step::Sysctl {
                    which: Sysctl::BusyRead,
                    value: read.unwrap_or(*usecs),
                },
            ];
            report(plan::apply(&steps, &mut cx)?);
        }
        NicCommand::Hugepages { count, size } => {
            let kb = host::parse_page_size(size)?;
            report(plan::apply(
                &[Step::Hugepages { kb, count: *count }],
                &mut cx,
            )?);
        }
        NicCommand::Bind { target, driver } => println!("{}", host::bind(target, driver)?),
        NicCommand::Unbind { target } => println!("{}", host::unbind(target)?),
        NicCommand::Apply {
            file,
            dry_run,
            devs,
        } => {
            let p = profile::load(file)?;
            let (steps, notes) = plan::drop_unsupported(p.plan(devs)?, &mut cx);
            for n in notes {
                println!("{n}");
            }
            if *dry_run {
                let (text, n) = plan::diff(&steps, &mut cx);
                print!("{text}");
                println!("{n} change(s) would be made; nothing was changed (dry run)");
            } else {
                report(plan::apply(&steps, &mut cx).with_context(|| format!("applying {file}"))?);
            }
        }
        NicCommand::Profile { name } => {
            let (_, text) = profile::SHIPPED
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| {
                    anyhow::anyhow!("no shipped profile `{name}` (there is: low-latency)")
                })?;
            print!("{text}");
        }
    }
    Ok(())
}

fn report(log: Vec<String>) {
    if log.is_empty() {
        println!("nothing to change");
    }
    for l in log {
        println!("changed {l}");
    }
}

fn flow(dev: &str, words: &[String]) -> anyhow::Result<()> {
    super::require_device(dev)?;
    let nt = |e: NicError| -> anyhow::Error {
        if e.is_unsupported() {
            anyhow::anyhow!("{dev}: the driver does not support ntuple steering rules")
        } else {
            anyhow::anyhow!("{dev}: {e}")
        }
    };
    match words.first().map(String::as_str) {
        Some("add") => {
            let rule = sys::FlowRule::parse(&words[1..])?;
            let loc = sys::flow_add(dev, &rule).map_err(nt)?;
            println!("{dev}: added ntuple rule at location {loc} (delete: tickmesh nic set {dev} flow del {loc})");
        }
        Some("del") => {
            let loc: u32 = words.get(1).and_then(|w| w.parse().ok()).ok_or_else(|| {
                anyhow::anyhow!("flow del needs a rule location (see `tickmesh nic show {dev}`)")
            })?;
            sys::flow_del(dev, loc).map_err(nt)?;
            println!("{dev}: deleted ntuple rule {loc}");
        }
        _ => anyhow::bail!("write `flow add RULE` or `flow del LOCATION`"),
    }
    Ok(())
}

/// `key=value` or `key value` pairs.
fn pairs(words: &[String]) -> Result<Vec<(String, String)>, NicError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if let Some((k, v)) = words[i].split_once('=') {
            out.push((k.to_string(), v.to_string()));
            i += 1;
        } else {
            let v = words
                .get(i + 1)
                .ok_or_else(|| NicError::Invalid(format!("`{}` needs a value", words[i])))?;
            out.push((words[i].clone(), v.clone()));
            i += 2;
        }
    }
    if out.is_empty() {
        return Err(NicError::Invalid("nothing to set".into()));
    }
    Ok(out)
}

fn num(k: &str, v: &str) -> Result<u32, NicError> {
    v.parse()
        .map_err(|_| NicError::Invalid(format!("{k}: `{v}` is not a number (0-4294967295)")))
}

fn counts(verb: &str, names: &[&str; 4], words: &[String]) -> Result<[Option<u32>; 4], NicError> {
    let mut out = [None; 4];
    for (k, v) in pairs(words)? {
        let i = names.iter().position(|n| *n == k).ok_or_else(|| {
            NicError::Invalid(format!(
                "{verb}: unknown kind `{k}` (one of {})",
                names.join(", ")
            ))
        })?;
        out[i] = Some(num(&k, &v)?);
    }
    Ok(out)
}

fn queue_cpus(
    dev: &str,
    words: &[String],
    mk: impl Fn(u32, host::Cpus) -> Step,
) -> Result<Vec<Step>, NicError> {
    pairs(words)?
        .into_iter()
        .map(|(q, c)| {
            let queue = q
                .parse()
                .map_err(|_| NicError::Invalid(format!("{dev}: `{q}` is not a queue number")))?;
            Ok(mk(queue, parse_cpu_list(&c)?))
        })
        .collect()
}

/// Turn the words after `nic set DEV` into steps.
pub fn parse_set(dev: &str, words: &[String]) -> Result<Vec<Step>, NicError> {
    super::check_ifname(dev)?;
    let d = || dev.to_string();
    let rest = &words[1.min(words.len())..];
    Ok(match words.first().map(String::as_str) {
        None => return Err(NicError::Invalid("nothing to set".into())),
        Some("channels") => vec![Step::Channels {
            dev: d(),
            want: counts("channels", &CHANNEL_NAMES, rest)?,
        }],
        Some("rings") => vec![Step::Rings {
            dev: d(),
            want: counts("rings", &RING_NAMES, rest)?,
        }],
        Some("coalesce") => {
            let mut want = Vec::new();
            for (k, v) in pairs(rest)? {
                let (_, _, is_bool) = COALESCE.iter().find(|(n, _, _)| *n == k).ok_or_else(|| {
                    NicError::Invalid(format!("coalesce: unknown parameter `{k}` (ethtool -C names: rx-usecs, adaptive-rx, ...)"))
                })?;
                let val = if *is_bool {
                    u32::from(features::parse_on_off(&v).ok_or_else(|| {
                        NicError::Invalid(format!("coalesce {k}: `{v}` is not on or off"))
                    })?)
                } else {
                    num(&k, &v)?
                };
                want.push((k, val));
            }
            vec![Step::Coalesce { dev: d(), want }]
        }
        Some("rss") => {
            let want = match rest.first().map(String::as_str) {
                Some("equal") => {
                    RssWant::Equal(num("rss equal", rest.get(1).map_or("", String::as_str))?)
                }
                Some("weights") if rest.len() > 1 => RssWant::Weights(
                    rest[1..]
                        .iter()
                        .map(|w| num("rss weight", w))
                        .collect::<Result<_, _>>()?,
                ),
                Some("default") => RssWant::Default,
                _ => {
                    return Err(NicError::Invalid(
                        "write `rss equal N`, `rss weights W0 W1 ...` or `rss default`".into(),
                    ))
                }
            };
            vec![Step::Rss { dev: d(), want }]
        }
        Some("irq-affinity") => queue_cpus(dev, rest, |queue, cpus| Step::IrqAffinity {
            dev: d(),
            queue,
            cpus,
        })?,
        Some("rps") => queue_cpus(dev, rest, |queue, cpus| Step::Queue {
            dev: d(),
            kind: QueueMask::Rps,
            queue,
            cpus,
        })?,
        Some("xps") => queue_cpus(dev, rest, |queue, cpus| Step::Queue {
            dev: d(),
            kind: QueueMask::Xps,
            queue,
            cpus,
        })?,
        Some(_) => pairs(words)?
            .into_iter()
            .map(|(k, v)| {
                let (name, on) = features::parse_toggle(&format!("{k}={v}"))?;
                Ok(Step::Feature { dev: d(), name, on })
            })
            .collect::<Result<_, NicError>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn set_words_become_steps() {
        let s = parse_set("v0", &w("gro=off tso on")).unwrap();
        assert_eq!(s.len(), 2);
        assert!(matches!(&s[1], Step::Feature { name, on: true, .. } if name == "tso"));
        let s = parse_set("v0", &w("channels rx=2 tx 3")).unwrap();
        assert_eq!(
            s,
            vec![Step::Channels {
                dev: "v0".into(),
                want: [Some(2), Some(3), None, None]
            }]
        );
        let s = parse_set("v0", &w("coalesce adaptive-rx off rx-usecs 0")).unwrap();
        assert_eq!(
            s,
            vec![Step::Coalesce {
                dev: "v0".into(),
                want: vec![("adaptive-rx".into(), 0), ("rx-usecs".into(), 0)]
            }]
        );
        let s = parse_set("v0", &w("rss weights 1 2")).unwrap();
        assert_eq!(
            s,
            vec![Step::Rss {
                dev: "v0".into(),
                want: RssWant::Weights(vec![1, 2])
            }]
        );
        let s = parse_set("v0", &w("rps 0=0-1 1=1")).unwrap();
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn malformed_set_words_are_named() {
        for (bad, needle) in [
            ("gro=maybe", "`maybe`"),
            ("gro", "needs a value"),
            ("channels rx=-1", "`-1` is not a number"),
            ("channels rxx=2", "unknown kind `rxx`"),
            ("rings rx=99999999999", "not a number"),
            ("coalesce rx-usec 0", "unknown parameter `rx-usec`"),
            ("coalesce adaptive-rx maybe", "not on or off"),
            ("rss", "rss equal N"),
            ("rss equal x", "`x` is not a number"),
            ("rps a=0", "`a` is not a queue number"),
            ("xps 0=0-x", "not a CPU list"),
            ("channels", "nothing to set"),
        ] {
            let e = parse_set("v0", &w(bad)).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        assert!(parse_set("a/b", &w("gro=on")).is_err());
    }
}
