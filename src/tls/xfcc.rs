//! `x-forwarded-client-cert` (XFCC), in Envoy's format: what an `http` listener does with
//! a client's header ([`Xfcc`], from `forward_client_cert_details`) and this proxy's own
//! element ([`element`], with the fields `set_current_client_cert_details` asks for).
//!
//! Format (Envoy's HTTP header documentation): elements, one per proxy, are separated by
//! `,`; an element is `;`-separated `Key=value` pairs; a value containing `,`, `;`, `=`
//! or `"` is double-quoted with `"` escaped as `\"`; `Subject` is always quoted; `Cert`
//! and `Chain` are URL-encoded PEM (RFC 3986: everything but unreserved characters as
//! `%XX`). Keys in Envoy's order: `By`, `Hash`, `Cert`, `Chain`, `Subject`, `URI`, `DNS`.
//!
//! Built once per connection (at its first request), never per request; never on a
//! connection without a verified client certificate.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

use crate::config::tls::{ClientCertDetails, ForwardClientCertDetails as Mode};

/// A listener's XFCC policy (compiled from its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xfcc {
    pub mode: Mode,
    pub details: ClientCertDetails,
}

impl Default for Xfcc {
    /// tickmesh's default: `SANITIZE_SET` with the client's URI SAN (what an Istio
    /// sidecar sends), so a backend can trust the header it gets.
    fn default() -> Xfcc {
        Xfcc {
            mode: Mode::SanitizeSet,
            details: ClientCertDetails {
                uri: true,
                ..ClientCertDetails::default()
            },
        }
    }
}

impl Xfcc {
    /// The client's own header goes upstream (`mtls`: the connection has a verified
    /// client certificate).
    #[inline]
    pub fn keeps_client_header(self, mtls: bool) -> bool {
        match self.mode {
            Mode::ForwardOnly | Mode::AppendForward => mtls,
            Mode::AlwaysForwardOnly => true,
            Mode::Sanitize | Mode::SanitizeSet => false,
        }
    }

    /// This proxy adds its element.
    #[inline]
    pub fn sets_own(self, mtls: bool) -> bool {
        mtls && matches!(self.mode, Mode::AppendForward | Mode::SanitizeSet)
    }
}

/// Append `value` to `out`, double-quoted (with `"` escaped) when it holds a separator,
/// or always with `force`.
fn push_value(out: &mut String, value: &str, force: bool) {
    if force || value.contains([',', ';', '=', '"']) {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn pair(out: &mut String, key: &str, value: &str, force_quote: bool) {
    if !out.is_empty() {
        out.push(';');
    }
    out.push_str(key);
    out.push('=');
    push_value(out, value, force_quote);
}

/// A certificate as PEM (RFC 7468: 64-character base64 lines).
pub fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// A name in RFC 2253 form (OpenSSL's `-nameopt RFC2253`, Envoy's `Subject`): the last
/// RDN first, RDNs joined by `,`, attributes of one RDN by `+`, special characters
/// escaped (RFC 2253 §2.4).
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for rdn in name.iter().collect::<Vec<_>>().into_iter().rev() {
        if !out.is_empty() {
            out.push(',');
        }
        for (i, attr) in rdn.iter().enumerate() {
            if i > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_2253(v, &mut out),
                Err(_) => {
                    // Not a string type: `#` and the DER value in hex (§2.4).
                    out.push('#');
                    for b in attr.attr_value().data {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

fn escape_2253(v: &str, out: &mut String) {
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// This proxy's XFCC element for a client that presented `chain` (leaf first, verified):
/// `By` (this listener's URI SAN, when it has one), `Hash` (SHA-256 of the leaf), then
/// the fields `details` asks for. `None` when the leaf does not parse (rustls verified
/// it, so this does not happen in practice).
pub fn element(
    by: Option<&str>,
    chain: &[CertificateDer<'_>],
    details: ClientCertDetails,
) -> Option<String> {
    let leaf = chain.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let mut out = String::new();
    if let Some(by) = by {
        pair(&mut out, "By", by, false);
    }
    pair(
        &mut out,
        "Hash",
        &super::certs::sha256_hex(leaf.as_ref()),
        false,
    );
    if details.cert {
        let mut v = String::new();
        url_encode(&pem(leaf.as_ref()), &mut v);
        pair(&mut out, "Cert", &v, false);
    }
    if details.chain {
        let all: String = chain.iter().map(|c| pem(c.as_ref())).collect();
        let mut v = String::new();
        url_encode(&all, &mut v);
        pair(&mut out, "Chain", &v, false);
    }
    if details.subject {
        pair(&mut out, "Subject", &rfc2253(cert.subject()), true);
    }
    let sans: Vec<&GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|e| e.value.general_names.iter().collect())
        .unwrap_or_default();
    if details.uri {
        for n in &sans {
            if let GeneralName::URI(u) = n {
                pair(&mut out, "URI", u, false);
            }
        }
    }
    if details.dns {
        for n in &sans {
            if let GeneralName::DNSName(d) = n {
                pair(&mut out, "DNS", d, false);
            }
        }
    }
    Some(out)
}

/// A listener's XFCC settings, checked: only `http` listeners have headers, and details
/// only mean something for the modes that add an element. `i` indexes `listeners`.
pub fn compile(l: &crate::config::Listener, i: usize) -> Result<Xfcc, crate::config::Problem> {
    let problem = |field: &str, message: String| crate::config::Problem {
        path: format!("listeners[{i}].{field}"),
        line: None,
        message,
    };
    let set =
        l.forward_client_cert_details.is_some() || l.set_current_client_cert_details.is_some();
    if set && l.protocol != crate::config::Protocol::Http {
        let field = if l.forward_client_cert_details.is_some() {
            "forward_client_cert_details"
        } else {
            "set_current_client_cert_details"
        };
        return Err(problem(
            field,
            format!(
                "only `protocol: http` listeners carry x-forwarded-client-cert; listener `{}` is {:?}",
                l.name, l.protocol
            ),
        ));
    }
    let mut x = Xfcc::default();
    if let Some(m) = l.forward_client_cert_details {
        x.mode = m;
        // Envoy's defaults once the operator chose a mode: By and Hash only.
        x.details = ClientCertDetails::default();
    }
    if let Some(d) = l.set_current_client_cert_details {
        if !matches!(x.mode, Mode::AppendForward | Mode::SanitizeSet) {
            return Err(problem(
                "set_current_client_cert_details",
                format!(
                    "has no effect with forward_client_cert_details {:?}: only APPEND_FORWARD and SANITIZE_SET add this proxy's element",
                    x.mode
                ),
            ));
        }
        x.details = d;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_separators_are_quoted() {
        let mut s = String::new();
        push_value(&mut s, "spiffe://td/ns/a/sa/b", false);
        assert_eq!(s, "spiffe://td/ns/a/sa/b");
        for (v, want) in [
            ("a,b", "\"a,b\""),
            ("a;b", "\"a;b\""),
            ("k=v", "\"k=v\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
        ] {
            let mut s = String::new();
            push_value(&mut s, v, false);
            assert_eq!(s, want, "{v}");
        }
        let mut s = String::new();
        push_value(&mut s, "CN=x", true);
        assert_eq!(s, "\"CN=x\"");
    }

    #[test]
    fn url_encoding_keeps_only_unreserved() {
        let mut s = String::new();
        url_encode("-----BEGIN X-----\nab+/=c~._\n", &mut s);
        assert_eq!(s, "-----BEGIN%20X-----%0Aab%2B%2F%3Dc~._%0A");
    }

    #[test]
    fn pem_lines_are_64_wide() {
        let der = vec![0xabu8; 100];
        let p = pem(&der);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
        assert!(p.ends_with('\n'));
    }

    #[test]
    fn rfc2253_escapes() {
        let mut s = String::new();
        escape_2253("#a, b+c;\"d\" ", &mut s);
        assert_eq!(s, "\\#a\\, b\\+c\\;\\\"d\\\"\\ ");
    }

    #[test]
    fn modes() {
        let x = |mode| Xfcc {
            mode,
            details: ClientCertDetails::default(),
        };
        // (mode, keeps with mTLS, keeps without, sets with mTLS)
        for (m, keep_m, keep_p, set) in [
            (Mode::Sanitize, false, false, false),
            (Mode::ForwardOnly, true, false, false),
            (Mode::AppendForward, true, false, true),
            (Mode::SanitizeSet, false, false, true),
            (Mode::AlwaysForwardOnly, true, true, false),
        ] {
            assert_eq!(x(m).keeps_client_header(true), keep_m, "{m:?}");
            assert_eq!(x(m).keeps_client_header(false), keep_p, "{m:?}");
            assert_eq!(x(m).sets_own(true), set, "{m:?}");
            assert!(
                !x(m).sets_own(false),
                "{m:?}: nothing to set without a client cert"
            );
        }
    }

    fn listener(extra: &str, protocol: &str) -> Result<crate::config::Listener, String> {
        let yaml = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:8443\n    protocol: {protocol}\n    cluster: c\n{extra}clusters:\n  - {{name: c, endpoints: [\"127.0.0.1:9\"]}}\n"
        );
        crate::config::parse_only(&yaml, crate::config::Format::Yaml)
            .map(|c| c.listeners[0].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn settings_compile_and_bad_ones_are_named() {
        let x = compile(&listener("", "http").unwrap(), 0).unwrap();
        assert_eq!(x, Xfcc::default());
        let l = listener(
            "    forward_client_cert_details: APPEND_FORWARD\n    set_current_client_cert_details: {subject: true, dns: true}\n",
            "http",
        )
        .unwrap();
        let x = compile(&l, 0).unwrap();
        assert_eq!(x.mode, Mode::AppendForward);
        assert!(x.details.subject && x.details.dns && !x.details.uri && !x.details.cert);
        // A mode alone: Envoy's default details (By and Hash only).
        let l = listener("    forward_client_cert_details: SANITIZE_SET\n", "http").unwrap();
        assert_eq!(
            compile(&l, 0).unwrap().details,
            ClientCertDetails::default()
        );

        let e = compile(
            &listener("    forward_client_cert_details: SANITIZE\n", "tcp").unwrap(),
            3,
        )
        .unwrap_err();
        assert_eq!(e.path, "listeners[3].forward_client_cert_details");
        assert!(e.message.contains("only `protocol: http`"), "{}", e.message);
        let l = listener(
            "    forward_client_cert_details: FORWARD_ONLY\n    set_current_client_cert_details: {uri: true}\n",
            "http",
        )
        .unwrap();
        let e = compile(&l, 0).unwrap_err();
        assert_eq!(e.path, "listeners[0].set_current_client_cert_details");
        assert!(e.message.contains("no effect"), "{}", e.message);
        // Details alone keep the default mode, SANITIZE_SET.
        let l = listener(
            "    set_current_client_cert_details: {cert: true}\n",
            "http",
        )
        .unwrap();
        assert!(compile(&l, 0).unwrap().details.cert);

        for (bad, want) in [
            (
                "    forward_client_cert_details: SANITISE\n",
                "forward_client_cert_details",
            ),
            (
                "    forward_client_cert_details: sanitize\n",
                "forward_client_cert_details",
            ),
            (
                "    set_current_client_cert_details: {issuer: true}\n",
                "issuer",
            ),
            (
                "    set_current_client_cert_details: {dns: yes please}\n",
                "dns",
            ),
            (
                "    set_current_client_cert_details: [subject]\n",
                "set_current_client_cert_details",
            ),
        ] {
            let e = listener(bad, "http").unwrap_err();
            assert!(e.contains(want) && e.contains("line 6"), "{bad}: {e}");
        }
    }
}
