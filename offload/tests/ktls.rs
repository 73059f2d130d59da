//! Kernel TLS hand-over against the software ring: records the kernel seals on a socket
//! must be byte-identical to the engine's, and the kernel must open the engine's records.
//! Needs the kernel `tls` module; without it each test says so and skips.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use tickmesh_offload::*;

fn require_ktls() -> bool {
    let p = ktls::probe();
    if !p.available {
        eprintln!("SKIPPED: {} — kernel TLS tests need it", p.detail);
    }
    p.available
}

fn loopback_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    for x in [&c, &s] {
        x.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    (c, s)
}

#[test]
fn kernel_sealed_records_match_the_engine() {
    if !require_ktls() {
        return;
    }
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        // TLS 1.2 GCM explicit nonces differ after the first record (see ktls module docs),
        // so one record per session keeps the comparison exact for every suite.
        for suite in CipherSuite::ALL {
            let key = test_key(suite);
            let p = params(version, suite, &key, TEST_IV, 5, 5);
            let (mut client, mut server) = loopback_pair();
            ktls::attach_ulp(client.as_raw_fd()).unwrap();
            ktls::install_keys(client.as_raw_fd(), Direction::Tx, suite, version, &p.tx).unwrap();
            let payload = b"kernel tls record".to_vec();
            client.write_all(&payload).unwrap();
            let mut e = engine(BackendChoice::Software);
            let id = e.create_session(&p).unwrap();
            let want = seal_records(&mut e, id, &[payload]).remove(0);
            let mut got = vec![0u8; want.len()];
            server.read_exact(&mut got).unwrap();
            assert_eq!(got, want, "{version} {suite}");
        }
    }
}

#[test]
fn kernel_opens_engine_records() {
    if !require_ktls() {
        return;
    }
    for suite in CipherSuite::ALL {
        let version = TlsVersion::Tls13;
        let p = params(version, suite, &test_key(suite), TEST_IV, 0, 0);
        let (mut client, mut server) = loopback_pair();
        ktls::attach_ulp(client.as_raw_fd()).unwrap();
        ktls::install_keys(client.as_raw_fd(), Direction::Rx, suite, version, &p.rx).unwrap();
        let mut e = engine(BackendChoice::Software);
        let id = e.create_session(&p).unwrap();
        let rec = seal_records(&mut e, id, &[b"to the kernel".to_vec()]).remove(0);
        server.write_all(&rec).unwrap();
        let mut got = [0u8; 13];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to the kernel", "{suite}");
    }
}
