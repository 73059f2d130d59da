//! Text → [`Config`]: YAML or TOML, then full validation. Every error names the field path
//! and, where the text has one, the line.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::model::{Config, Protocol};

/// Which syntax a config text is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// `.toml` files are TOML; everything else (`.yaml`, `.yml`, no extension) is YAML.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("toml") => Format::Toml,
            _ => Format::Yaml,
        }
    }
}

/// One problem in a config, located as precisely as the text allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Field path such as `listeners[0].cluster`; empty for syntax errors.
    pub path: String,
    /// 1-based line in the source text, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A rejected config: every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                path: path.into(),
                line: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Parse and validate a config text.
pub fn parse(text: &str, format: Format) -> Result<Config, ConfigError> {
    let cfg = parse_only(text, format)?;
    validate(&cfg).map_err(|mut e| {
        for p in &mut e.problems {
            p.line = locate(text, format, &p.path);
        }
        e
    })?;
    Ok(cfg)
}

/// Syntax and shape only (no cross-reference checks): what an `apply` patch must pass
/// before it is merged into the running config and validated as a whole.
pub fn parse_only(text: &str, format: Format) -> Result<Config, ConfigError> {
    match format {
        Format::Yaml => {
            if text.trim().is_empty() {
                return Ok(Config::default());
            }
            serde_yaml::from_str(text).map_err(|e| {
                let line = e.location().map(|l| l.line());
                // serde_yaml's message already carries the field path ("listeners[0]: …").
                let message = e.to_string();
                let message = match message.rfind(" at line ") {
                    Some(i) => message[..i].to_string(),
                    None => message,
                };
                ConfigError {
                    problems: vec![Problem {
                        path: String::new(),
                        line,
                        message,
                    }],
                }
            })
        }
        Format::Toml => toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                problems: vec![Problem {
                    path: String::new(),
                    line,
                    message: e.message().trim().to_string(),
                }],
            }
        }),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

const NAME_RULE: &str = "names are 1-63 characters of [A-Za-z0-9._-]";

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whole-config checks: names, uniqueness, cross-references, value ranges.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |path: String, message: String| {
        problems.push(Problem {
            path,
            line: None,
            message,
        })
    };

    let mut cluster_names = HashSet::new();
    for (i, c) in cfg.clusters.iter().enumerate() {
        let at = format!("clusters[{i}]");
        if !valid_name(&c.name) {
            bad(
                format!("{at}.name"),
                format!("invalid name `{}`: {NAME_RULE}", c.name),
            );
        }
        if !cluster_names.insert(c.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("duplicate cluster name `{}`", c.name),
            );
        }
        if c.endpoints.is_empty() {
            bad(
                format!("{at}.endpoints"),
                "a cluster needs at least one endpoint".into(),
            );
        }
        let mut seen = HashSet::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            if !(1..=10_000).contains(&e.weight) {
                bad(
                    format!("{at}.endpoints[{j}].weight"),
                    format!("weight {} is out of range 1..=10000", e.weight),
                );
            }
            if !seen.insert(e.address) {
                bad(
                    format!("{at}.endpoints[{j}]"),
                    format!("endpoint {} is listed twice", e.address),
                );
            }
            if e.address.port() == 0 || e.address.ip().is_unspecified() {
                bad(
                    format!("{at}.endpoints[{j}]"),
                    format!("endpoint {} is not a connectable address", e.address),
                );
            }
        }
        if c.endpoints.len() > u16::MAX as usize {
            bad(
                format!("{at}.endpoints"),
                format!("at most {} endpoints per cluster", u16::MAX),
            );
        }
        if let Some(t) = c.connect_timeout {
            if t.is_zero() || t.as_secs() > 3600 {
                bad(
                    format!("{at}.connect_timeout"),
                    "must be between 1ms and 1h".into(),
                );
            }
        }
        if let Some(n) = c.max_connect_attempts {
            if !(1..=16).contains(&n) {
                bad(
                    format!("{at}.max_connect_attempts"),
                    format!("{n} is out of range 1..=16"),
                );
            }
        }
    }

    let mut listener_names = HashSet::new();
    let mut addresses: HashMap<(Protocol, std::net::SocketAddr), &str> = HashMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        if !valid_name(&l.name) {
            bad(
                format!("{at}.name"),
                format!("invalid name `{}`: {NAME_RULE}", l.name),
            );
        }
        if !listener_names.insert(l.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        if let Some(other) = addresses.insert((l.protocol, l.address), &l.name) {
            bad(
                format!("{at}.address"),
                format!(
                    "{} {} is already used by listener `{other}`",
                    l.protocol, l.address
                ),
            );
        }
        match (&l.cluster, l.weighted_clusters.is_empty()) {
            (Some(_), false) => bad(
                at.clone(),
                "set either `cluster` or `weighted_clusters`, not both".into(),
            ),
            (None, true) => bad(
                at.clone(),
                "a listener needs `cluster` or `weighted_clusters`".into(),
            ),
            _ => {}
        }
        if let Some(c) = &l.cluster {
            if !cluster_names.contains(c.as_str()) {
                bad(
                    format!("{at}.cluster"),
                    format!("cluster `{c}` is not defined"),
                );
            }
        }
        let mut total: u64 = 0;
        for (j, w) in l.weighted_clusters.iter().enumerate() {
            if !cluster_names.contains(w.cluster.as_str()) {
                bad(
                    format!("{at}.weighted_clusters[{j}].cluster"),
                    format!("cluster `{}` is not defined", w.cluster),
                );
            }
            total += u64::from(w.weight);
        }
        if !l.weighted_clusters.is_empty() && (total == 0 || total > 1_000_000) {
            bad(
                format!("{at}.weighted_clusters"),
                format!("weights sum to {total}; the sum must be 1..=1000000"),
            );
        }
        if l.max_connections == Some(0) {
            bad(format!("{at}.max_connections"), "must be at least 1".into());
        }
        if l.idle_timeout.is_some_and(|t| t.is_zero()) {
            bad(format!("{at}.idle_timeout"), "must be longer than 0".into());
        }
        if l.forwarding.is_some() && !l.address.is_ipv4() {
            bad(
                format!("{at}.forwarding"),
                format!(
                    "packet forwarding (DPDK engine) supports IPv4 VIPs only; {} is IPv6",
                    l.address
                ),
            );
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// The 1-based line where `path` (`listeners[0].cluster`) is written in `text`.
pub fn locate(text: &str, format: Format, path: &str) -> Option<usize> {
    match format {
        Format::Yaml => locate_yaml(text, path),
        Format::Toml => locate_toml(text, path),
    }
}

fn locate_yaml(text: &str, want: &str) -> Option<usize> {
    use yaml_rust2::parser::{Event, Parser};
    enum Frame {
        Map { key: Option<String> },
        Seq { index: usize },
    }
    fn path_of(stack: &[(Frame, String)]) -> String {
        stack.last().map(|(_, p)| p.clone()).unwrap_or_default()
    }
    // Each frame remembers the path of the container it is.
    let mut stack: Vec<(Frame, String)> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    // The path of the value about to start, given the innermost container.
    let child_path = |stack: &mut Vec<(Frame, String)>| -> Option<String> {
        let (frame, base) = stack.last_mut()?;
        let join = |k: &str| {
            if base.is_empty() {
                k.to_string()
            } else {
                format!("{base}.{k}")
            }
        };
        match frame {
            Frame::Map { key } => key.take().map(|k| join(&k)),
            Frame::Seq { index } => {
                let p = format!("{base}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    };
    loop {
        let (ev, mark) = parser.next_token().ok()?;
        let line = mark.line();
        match ev {
            Event::StreamEnd => return None,
            Event::Scalar(value, ..) => {
                let is_key = matches!(stack.last(), Some((Frame::Map { key: None }, _)));
                if is_key {
                    let base = path_of(&stack);
                    let p = if base.is_empty() {
                        value.clone()
                    } else {
                        format!("{base}.{value}")
                    };
                    if p == want {
                        return Some(line);
                    }
                    if let Some((Frame::Map { key }, _)) = stack.last_mut() {
                        *key = Some(value);
                    }
                } else if child_path(&mut stack).as_deref() == Some(want) {
                    return Some(line);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let p = if stack.is_empty() {
                    String::new()
                } else {
                    child_path(&mut stack).unwrap_or_default()
                };
                if !p.is_empty() && p == want {
                    return Some(line);
                }
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { index: 0 }
                };
                stack.push((frame, p));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
}

fn locate_toml(text: &str, want: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for part in want.split('.') {
        let (key, index) = match part.find('[') {
            Some(b) => (
                &part[..b],
                part[b + 1..part.len() - 1].parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        item = item.get(key)?;
        span = item.span().or(span);
        if let Some(i) = index {
            item = match item {
                toml_edit::Item::ArrayOfTables(a) => {
                    let t = a.get(i)?;
                    span = t.span().or(span);
                    // Walk on through the table as an item.
                    return locate_in_table(t, want, part, span, text);
                }
                other => other.get(i)?,
            };
            span = item.span().or(span);
        }
    }
    span.map(|s| line_of(text, s.start))
}

fn locate_in_table(
    t: &toml_edit::Table,
    want: &str,
    upto: &str,
    mut span: Option<std::ops::Range<usize>>,
    text: &str,
) -> Option<usize> {
    let rest = want
        .split_once(upto)
        .map(|(_, r)| r.trim_start_matches('.'))
        .unwrap_or("");
    let mut item: Option<&toml_edit::Item> = None;
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (key, index) = match part.find('[') {
            Some(b) => (
                &part[..b],
                part[b + 1..part.len() - 1].parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        let next = match item {
            None => t.get(key)?,
            Some(i) => i.get(key)?,
        };
        span = next.span().or(span);
        item = Some(match index {
            Some(i) => {
                let v = next.get(i)?;
                span = v.span().or(span);
                v
            }
            None => next,
        });
    }
    span.map(|s| line_of(text, s.start))
}
