//! Measures prefill and decode speed in llama-bench's form (pp512, tg128), load time, peak
//! resident memory and, with `--turns N`, the time to first token of turn 1 and turn N of a
//! scripted chat through the chat runtime, with the KV cache on and off.
//!
//!     cargo run --release --bin smallmind-bench -- -m MODEL.gguf -t 1,2 -p 512 -n 128 -r 5 --turns 20

use std::process::ExitCode;
use std::time::Instant;

use std::sync::Arc;

use smallmind::chat::Chat;
use smallmind::engine::{Engine, EngineOptions, NoEvents, SilentLoad};
use smallmind::model::{ForwardScratch, KvType, Logits};

struct Args {
    model: String,
    threads: Vec<usize>,
    prompt_tokens: usize,
    gen_tokens: usize,
    repetitions: usize,
    kv_type: KvType,
    chat_turns: usize,
}

fn usage() -> &'static str {
    "usage: smallmind-bench -m MODEL.gguf [-t 1,2] [-p 512] [-n 128] [-r 5] [--kv f16|f32] [--turns 20]"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: String::new(),
        threads: vec![1, 2],
        prompt_tokens: 512,
        gen_tokens: 128,
        repetitions: 5,
        kv_type: KvType::F16,
        chat_turns: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: '{v}' is not a number"))
        };
        match flag.as_str() {
            "-m" => args.model = value()?,
            "-t" => {
                args.threads = value()?
                    .split(',')
                    .map(|t| {
                        t.parse::<usize>()
                            .map_err(|_| format!("-t: '{t}' is not a number"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "-p" => args.prompt_tokens = number(value()?)?,
            "-n" => args.gen_tokens = number(value()?)?,
            "-r" => args.repetitions = number(value()?)?.max(1),
            "--kv" => {
                args.kv_type = match value()?.as_str() {
                    "f16" => KvType::F16,
                    "f32" => KvType::F32,
                    other => return Err(format!("--kv: '{other}' is not f16 or f32")),
                }
            }
            "--turns" => args.chat_turns = number(value()?)?,
            "-h" | "--help" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument '{other}'\n{}", usage())),
        }
    }
    if args.model.is_empty() {
        return Err(usage().to_string());
    }
    Ok(args)
}

/// Peak resident set size of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median_and_spread(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (median, var.sqrt())
}

/// Tokens per second of evaluating `n` prompt tokens in one pass from an empty cache.
fn prefill_rate(engine: &Engine, n: usize) -> f64 {
    let tokens: Vec<u32> = (0..n)
        .map(|i| (100 + i * 7) as u32 % engine.tokenizer.n_vocab() as u32)
        .collect();
    let mut cache = engine.new_cache();
    let mut scratch = ForwardScratch::default();
    let mut logits = Vec::new();
    let start = Instant::now();
    for chunk in tokens.chunks(512) {
        let wanted = if cache.len() + chunk.len() == n {
            Logits::Last
        } else {
            Logits::None
        };
        engine
            .model()
            .expect("the benchmark loads the weights")
            .forward(
                engine.pool(),
                chunk,
                &mut cache,
                wanted,
                &mut scratch,
                &mut logits,
            )
            .expect("forward");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Tokens per second of generating `n` tokens one at a time (llama-bench's tg: from an empty
/// cache, one token per forward pass).
fn decode_rate(engine: &Engine, n: usize) -> f64 {
    let mut cache = engine.new_cache();
    let mut scratch = ForwardScratch::default();
    let mut logits = Vec::new();
    let mut token = engine.tokenizer.bos_id().unwrap_or(0);
    let start = Instant::now();
    for _ in 0..n {
        engine
            .model()
            .expect("the benchmark loads the weights")
            .forward(
                engine.pool(),
                &[token],
                &mut cache,
                Logits::Last,
                &mut scratch,
                &mut logits,
            )
            .expect("forward");
        token = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Time to first token (ms) of every turn of a scripted conversation: short user questions,
/// 16-token greedy replies, the chat runtime's own template and KV reuse.
fn chat_ttft(
    engine: &Arc<Engine>,
    turns: usize,
    kv_cache: bool,
) -> Result<Vec<(f64, usize, usize)>, String> {
    let options =
        format!(r#"{{"kv_cache": {kv_cache}, "system_prompt": "You are a concise assistant."}}"#);
    let chat = Chat::create(Arc::clone(engine), Some(&options)).map_err(|e| e.to_string())?;
    let topics = [
        "the sun", "rivers", "bread", "bicycles", "the moon", "glass", "owls", "tea", "bridges",
        "snow",
    ];
    (0..turns)
        .map(|t| {
            let request = format!(
                r#"{{"messages": [{{"role": "user", "content": "Question {}: tell me one fact about {}."}}], "max_tokens": 16, "temperature": 0}}"#,
                t + 1,
                topics[t % topics.len()]
            );
            let (_, usage) = chat.send(&request, Instant::now(), &mut NoEvents).map_err(|e| e.to_string())?;
            Ok((usage.time_to_first_token_ms, usage.prompt_tokens, usage.cached_tokens))
        })
        .collect()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("| model | threads | test | t/s | ± |");
    println!("|---|---|---|---|---|");
    let name = std::path::Path::new(&args.model)
        .file_name()
        .map_or(args.model.clone(), |n| n.to_string_lossy().into_owned());
    for &threads in &args.threads {
        let mut options = EngineOptions::new(&args.model);
        options.threads = Some(threads);
        options.kv_type = args.kv_type;
        let load_start = Instant::now();
        let engine = match Engine::load(&options, &mut SilentLoad) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let load_ms = load_start.elapsed().as_secs_f64() * 1000.0;
        // One warm-up of each, as llama-bench does.
        prefill_rate(&engine, args.prompt_tokens.min(64));
        decode_rate(&engine, 4);
        if args.prompt_tokens > 0 {
            let (m, s) = median_and_spread(
                (0..args.repetitions)
                    .map(|_| prefill_rate(&engine, args.prompt_tokens))
                    .collect(),
            );
            println!(
                "| {name} | {threads} | pp{} | {m:.2} | {s:.2} |",
                args.prompt_tokens
            );
        }
        if args.gen_tokens > 0 {
            let (m, s) = median_and_spread(
                (0..args.repetitions)
                    .map(|_| decode_rate(&engine, args.gen_tokens))
                    .collect(),
            );
            println!(
                "| {name} | {threads} | tg{} | {m:.2} | {s:.2} |",
                args.gen_tokens
            );
        }
        eprintln!("threads {threads}: load {load_ms:.0} ms");
        if args.chat_turns > 0 {
            for kv_cache in [true, false] {
                match chat_ttft(&engine, args.chat_turns, kv_cache) {
                    Ok(turns) => {
                        let (first, last) = (turns[0], turns[turns.len() - 1]);
                        println!(
                            "| {name} | {threads} | chat ttft, kv cache {} | turn 1: {:.1} ms ({} prompt tokens) | turn {}: {:.1} ms ({} prompt tokens, {} cached) |",
                            if kv_cache { "on" } else { "off" },
                            first.0,
                            first.1,
                            turns.len(),
                            last.0,
                            last.1,
                            last.2
                        );
                    }
                    Err(e) => {
                        eprintln!("chat: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    if let Some(rss) = peak_rss_mib() {
        println!("\npeak RSS: {rss:.1} MiB");
    }
    ExitCode::SUCCESS
}
