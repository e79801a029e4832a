//! The broker's config file: any text is a config or a clear error, never a panic. A
//! config that parses must also pass its own validation again and build its tools (the
//! files it names do not exist here, so that can fail, but only with an error).
#![no_main]

use std::path::Path;

use enclave_broker::{Config, Tools};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new("/nonexistent/enclave-fuzz")) else {
        return;
    };
    config
        .validate()
        .expect("a parsed config is a valid config");
    let _ = config.executors.check_tls();
    let _ = Tools::from_config(&config.tools);
});
