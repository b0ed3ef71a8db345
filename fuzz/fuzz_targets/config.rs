//! Config files: any text gives a config or a list of problems, never a panic.
#![no_main]

use ingest_bridge_fuzz::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(config) => {
            // What validation accepted holds together.
            assert!(config.storage.part_size <= config.storage.max_part_size);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
