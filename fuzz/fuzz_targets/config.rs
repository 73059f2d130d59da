//! Fuzz a config text, YAML or TOML by the first byte (operator input, and what an
//! `apply` on the control socket carries; `tickmesh::control::fuzz::config_one`): a
//! refused config names its problems with lines inside the text, and an accepted one
//! written out as YAML parses back to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickmesh::control::fuzz::config_one(data);
});
