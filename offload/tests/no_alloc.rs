//! The steady path allocates nothing: after the engine and sessions exist, thousands of
//! seal/open jobs through each software backend leave the global allocation count
//! unchanged. (Own test binary: the counting allocator sees every thread in the process.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use tickmesh_offload::*;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn drive(e: &mut Engine, id: SessionId, rounds: usize, record: &mut [u8], record_len: &mut usize) {
    let payload = [0x42u8; 1024];
    for round in 0..rounds {
        // A batch of 16 seals and (after the first round) 16 opens of the last record.
        for tag in 0..16u64 {
            e.submit_seal(id, tag, ContentType::ApplicationData, &payload)
                .unwrap();
        }
        let mut reaped = 0;
        let mut spins = 0u64;
        while reaped < 16 {
            e.poll();
            reaped += e.reap(64, |c| {
                let out = c.result.unwrap();
                record[..out.data.len()].copy_from_slice(out.data);
                *record_len = out.data.len();
            });
            spins += 1;
            assert!(spins < 50_000_000, "jobs did not complete");
        }
        let _ = round;
    }
}

#[test]
fn steady_path_does_not_allocate() {
    #[allow(unused_mut)]
    let mut choices = vec![
        BackendChoice::Software,
        BackendChoice::SoftwareThreaded { cpu: None },
    ];
    // The cryptodev backend's ops and mbufs come from pools filled at start; only the
    // Rust side is counted here (DPDK allocates from its own memory, not the heap).
    #[cfg(feature = "dpdk")]
    {
        if std::env::var_os("TICKMESH_CRYPTODEV").is_none() {
            tickmesh_offload::backend::cryptodev::set_driver(Some(
                tickmesh_offload::backend::cryptodev::Driver::Openssl,
            ));
        }
        choices.push(BackendChoice::Cryptodev);
    }
    for choice in choices {
        let mut e = Engine::new(EngineConfig {
            backend: choice,
            slots: 64,
            batch: 32,
            ..Default::default()
        })
        .unwrap();
        let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[3; 16], [4; 12], 0).unwrap();
        // Seal-only session (the records are checked by the conformance suite).
        let id = e
            .create_session(&SessionParams {
                suite: CipherSuite::Aes128Gcm,
                version: TlsVersion::Tls13,
                tx: keys.clone(),
                rx: keys,
                in_flight_limit: 0,
            })
            .unwrap();
        let mut record = vec![0u8; MAX_RECORD];
        let mut len = 0;
        drive(&mut e, id, 4, &mut record, &mut len); // warm-up
                                                     // Let the crypto thread go idle and park once, then wake it: one-time lazy set-up
                                                     // of parking (thread-local state) happens here, outside the measured window.
        std::thread::sleep(std::time::Duration::from_millis(20));
        drive(&mut e, id, 4, &mut record, &mut len);
        let before = ALLOCS.load(Ordering::SeqCst);
        drive(&mut e, id, 200, &mut record, &mut len);
        // Opens too: submit the last record against a fresh rx sequence each time would
        // fail auth, which is fine for an allocation count (errors allocate nothing either).
        for tag in 0..16u64 {
            e.submit_open(id, tag, &record[..len]).unwrap();
        }
        while e.in_flight() > 0 {
            e.poll();
            e.reap(64, |_| {});
        }
        let after = ALLOCS.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "{choice:?}: {} allocations on the steady path",
            after - before
        );
    }
}
