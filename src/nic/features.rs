//! Feature names: the kernel's (`rx-gro`, `tx-tcp-segmentation`, from the `ETH_SS_FEATURES`
//! string set) and ethtool's legacy groups with their `-K` abbreviations (`gro`, `tso`,
//! `tx`, ...). Resolution is pure: it takes the device's feature list and never touches
//! the device. A group covers the kernel bits its pattern matches; setting a group changes
//! only the members the driver can change, as `ethtool -K` does.

use super::genl::Feature;
use super::NicError;

/// ethtool's legacy offload groups: (abbreviation, long name, kernel-name pattern; `*`
/// matches any run of characters). The grouping follows ethtool(8)'s `-k` output.
pub const GROUPS: &[(&str, &str, &str)] = &[
    ("rx", "rx-checksumming", "rx-checksum"),
    ("tx", "tx-checksumming", "tx-checksum-*"),
    ("sg", "scatter-gather", "tx-scatter-gather*"),
    ("tso", "tcp-segmentation-offload", "tx-tcp*-segmentation"),
    ("ufo", "udp-fragmentation-offload", "tx-udp-fragmentation"),
    (
        "gso",
        "generic-segmentation-offload",
        "tx-generic-segmentation",
    ),
    ("gro", "generic-receive-offload", "rx-gro"),
    ("lro", "large-receive-offload", "rx-lro"),
    ("rxvlan", "rx-vlan-offload", "rx-vlan-hw-parse"),
    ("txvlan", "tx-vlan-offload", "tx-vlan-hw-insert"),
    ("ntuple", "ntuple-filters", "rx-ntuple-filter"),
    ("rxhash", "receive-hashing", "rx-hashing"),
];

/// Glob with `*` only.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            // `*` may swallow any run: try every split point of the rest.
            name.starts_with(head) && {
                let rest = &name[head.len()..];
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
            }
        }
    }
}

/// The kernel bits a name stands for on this device: itself when the device has a feature
/// of that exact name, else the members of the group it names. An unknown name is an error
/// naming it.
pub fn resolve<'a>(
    dev: &str,
    name: &str,
    feats: &'a [Feature],
) -> Result<Vec<&'a Feature>, NicError> {
    if let Some(f) = feats.iter().find(|f| f.name == name) {
        return Ok(vec![f]);
    }
    if let Some((_, _, pat)) = GROUPS.iter().find(|(a, l, _)| *a == name || *l == name) {
        let members: Vec<&Feature> = feats.iter().filter(|f| glob(pat, &f.name)).collect();
        if !members.is_empty() {
            return Ok(members);
        }
        return Err(NicError::Invalid(format!(
            "{dev} has no feature `{name}` (no kernel feature matches `{pat}`)"
        )));
    }
    let hint = feats
        .iter()
        .map(|f| f.name.as_str())
        .find(|n| n.contains(name) || name.contains(*n))
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    Err(NicError::Invalid(format!(
        "{dev} has no feature `{name}` (names as `ethtool -k` prints them, or -K abbreviations like gro, tso, tx{hint})"
    )))
}

/// The bits to write to turn `name` on or off: the changeable members. A feature (or a
/// group with no changeable member) that the driver fixes is an error naming it.
pub fn bits_to_set(dev: &str, name: &str, feats: &[Feature]) -> Result<Vec<String>, NicError> {
    let members = resolve(dev, name, feats)?;
    let bits: Vec<String> = members
        .iter()
        .filter(|f| f.changeable)
        .map(|f| f.name.clone())
        .collect();
    if bits.is_empty() {
        let state = if members.iter().any(|f| f.active) {
            "on"
        } else {
            "off"
        };
        return Err(NicError::Invalid(format!(
            "{dev}: feature `{name}` is fixed ({state} [fixed]): the driver cannot change it"
        )));
    }
    Ok(bits)
}

/// Parse `FEATURE=on|off`.
pub fn parse_toggle(s: &str) -> Result<(String, bool), NicError> {
    let (name, val) = s
        .split_once('=')
        .ok_or_else(|| NicError::Invalid(format!("`{s}`: write FEATURE=on or FEATURE=off")))?;
    let on = parse_on_off(val)
        .ok_or_else(|| NicError::Invalid(format!("`{s}`: `{val}` is not on or off")))?;
    if name.is_empty() {
        return Err(NicError::Invalid(format!(
            "`{s}`: the feature name is missing"
        )));
    }
    Ok((name.to_string(), on))
}

pub fn parse_on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "1" => Some(true),
        "off" | "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, active: bool, changeable: bool) -> Feature {
        Feature {
            name: name.into(),
            active,
            wanted: active,
            changeable,
        }
    }

    fn veth_like() -> Vec<Feature> {
        vec![
            f("rx-checksum", true, true),
            f("tx-checksum-ipv4", false, false),
            f("tx-checksum-ip-generic", true, true),
            f("tx-tcp-segmentation", true, true),
            f("tx-tcp6-segmentation", true, true),
            f("tx-tcp-ecn-segmentation", true, true),
            f("rx-gro", false, true),
            f("rx-lro", false, false),
            f("tx-generic-segmentation", true, true),
        ]
    }

    #[test]
    fn glob_matches_like_ethtool_groups() {
        assert!(glob("tx-tcp*-segmentation", "tx-tcp-segmentation"));
        assert!(glob("tx-tcp*-segmentation", "tx-tcp6-segmentation"));
        assert!(glob("tx-tcp*-segmentation", "tx-tcp-mangleid-segmentation"));
        assert!(!glob("tx-tcp*-segmentation", "tx-udp-segmentation"));
        assert!(glob("tx-checksum-*", "tx-checksum-sctp"));
        assert!(!glob("rx-gro", "rx-gro-hw"));
    }

    #[test]
    fn abbreviations_long_names_and_kernel_names_resolve() {
        let v = veth_like();
        assert_eq!(bits_to_set("v", "gro", &v).unwrap(), vec!["rx-gro"]);
        assert_eq!(
            bits_to_set("v", "generic-receive-offload", &v).unwrap(),
            vec!["rx-gro"]
        );
        assert_eq!(bits_to_set("v", "rx-gro", &v).unwrap(), vec!["rx-gro"]);
        assert_eq!(bits_to_set("v", "tso", &v).unwrap().len(), 3);
        // tx skips the fixed ipv4 bit.
        assert_eq!(
            bits_to_set("v", "tx", &v).unwrap(),
            vec!["tx-checksum-ip-generic"]
        );
    }

    #[test]
    fn unknown_and_fixed_features_are_named() {
        let v = veth_like();
        let e = bits_to_set("v", "rx-grox", &v).unwrap_err().to_string();
        assert!(
            e.contains("`rx-grox`") && e.contains("did you mean `rx-gro`"),
            "{e}"
        );
        let e = bits_to_set("v", "lro", &v).unwrap_err().to_string();
        assert!(e.contains("fixed") && e.contains("`lro`"), "{e}");
        let e = bits_to_set("v", "ntuple", &v).unwrap_err().to_string();
        assert!(e.contains("no feature `ntuple`"), "{e}");
    }

    #[test]
    fn toggles_parse_and_reject_garbage() {
        assert_eq!(parse_toggle("gro=off").unwrap(), ("gro".into(), false));
        assert_eq!(parse_toggle("rx-gro=on").unwrap(), ("rx-gro".into(), true));
        for bad in ["gro", "gro=maybe", "=on", "gro=", ""] {
            assert!(parse_toggle(bad).is_err(), "{bad:?}");
        }
    }
}
