//! What the targets share: the tiny synthetic models of tests/oracle, loaded once per process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use smallmind::engine::{Engine, EngineOptions, SilentLoad};

pub fn synthetic(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/oracle/synthetic")).join(name)
}

/// A one-thread engine on a synthetic model with a short context (fast forward passes).
pub fn engine(name: &'static str) -> Arc<Engine> {
    static ENGINES: OnceLock<std::sync::Mutex<Vec<(&'static str, Arc<Engine>)>>> = OnceLock::new();
    let engines = ENGINES.get_or_init(Default::default);
    let mut engines = engines.lock().unwrap();
    if let Some((_, e)) = engines.iter().find(|(n, _)| *n == name) {
        return Arc::clone(e);
    }
    let mut options = EngineOptions::new(synthetic(name));
    options.threads = Some(1);
    options.context_length = Some(256);
    let engine = Engine::load(&options, &mut SilentLoad).expect("the synthetic model loads");
    engines.push((name, Arc::clone(&engine)));
    engine
}
