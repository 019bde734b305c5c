//! Measures prefill and decode speed in llama-bench's form (pp512, tg128), load time, peak
//! resident memory and, with `--turns N`, the time to first token of turn 1 and turn N of a
//! scripted chat through the chat runtime, with the KV cache on and off, and with
//! `--json-schema FILE` the cost of constrained decoding: the time the constraint takes per
//! token (computing the mask and accepting the token; median and p99) and decode tokens/s of
//! the same replies with and without the constraint.
//!
//!     cargo run --release --bin smallmind-bench -- -m MODEL.gguf -t 1,2 -p 512 -n 128 -r 5 --turns 20
//!     cargo run --release --bin smallmind-bench -- -m MODEL.gguf -t 2 -p 0 -n 0 -r 5 --json-schema bench/person.schema.json
//!
//! With `--chart OUT.svg`, the results are drawn as an SVG chart, beside every
//! `--compare NAME=FILE` (llama-bench's `-o md` output of the same tests), with the chat
//! turns' time to first token when `--turns` is given.
//!
//! With `--profile`, one more pp and tg run each print where their time went, per part of
//! the forward pass (matmuls per tensor, attention, norms, RoPE, the output head) and the
//! greedy pick over the logits; each part includes its hand-off to the worker threads.
//!
//! With `--shared-chats N`, N chats with one long system prompt each answer one question, on an
//! engine that shares the system turn between chats and on one that does not: the time to
//! first token of chat 1 and the median of chats 2..N.

mod chart;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::sync::Arc;

use smallmind::chat::Chat;
use smallmind::chat::structured::json_schema_constraint;
use smallmind::engine::{
    Engine, EngineOptions, GenerationRequest, LoadObserver, LogLevel, NoEvents, SilentLoad,
};
use smallmind::model::{ForwardScratch, KvType, Logits, Op, OpProfile};
use smallmind::sample::{SamplingParams, TokenConstraint, TokenMask};

struct Args {
    model: String,
    threads: Vec<usize>,
    prompt_tokens: usize,
    gen_tokens: usize,
    repetitions: usize,
    kv_type: KvType,
    chat_turns: usize,
    json_schema: Option<String>,
    shared_chats: usize,
    profile: bool,
    /// Where to write the SVG chart, and llama-bench outputs (name, markdown file) to draw
    /// beside ours.
    chart: Option<String>,
    compare: Vec<(String, String)>,
}

fn usage() -> &'static str {
    "usage: smallmind-bench -m MODEL.gguf [-t 1,2] [-p 512] [-n 128] [-r 5] [--kv f16|f32] [--turns 20] [--json-schema FILE] [--shared-chats 10] [--profile] [--chart OUT.svg [--compare NAME=llama-bench-md-output ...]]"
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
        json_schema: None,
        shared_chats: 0,
        profile: false,
        chart: None,
        compare: Vec::new(),
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
            "--json-schema" => args.json_schema = Some(value()?),
            "--shared-chats" => args.shared_chats = number(value()?)?,
            "--profile" => args.profile = true,
            "--chart" => args.chart = Some(value()?),
            "--compare" => {
                let spec = value()?;
                let (name, file) = spec.split_once('=').ok_or_else(|| {
                    format!("--compare takes NAME=LLAMA_BENCH_OUTPUT.md, not '{spec}'")
                })?;
                args.compare.push((name.to_string(), file.to_string()));
            }
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

/// The CPU's model name (Linux), for the chart's title.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| "this CPU".to_string())
}

fn median_and_spread(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (median, var.sqrt())
}

/// Tokens per second of evaluating `n` prompt tokens in one pass from an empty cache.
fn prefill_rate(engine: &Engine, n: usize, scratch: &mut ForwardScratch) -> f64 {
    let tokens: Vec<u32> = (0..n)
        .map(|i| (100 + i * 7) as u32 % engine.tokenizer.n_vocab() as u32)
        .collect();
    let mut cache = engine.new_cache();
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
                scratch,
                &mut logits,
            )
            .expect("forward");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Tokens per second of generating `n` tokens one at a time (llama-bench's tg: from an empty
/// cache, one token per forward pass, the greedy pick over the logits timed into `picking`).
fn decode_rate(
    engine: &Engine,
    n: usize,
    scratch: &mut ForwardScratch,
    picking: &mut Duration,
) -> f64 {
    let mut cache = engine.new_cache();
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
                scratch,
                &mut logits,
            )
            .expect("forward");
        let pick_start = Instant::now();
        token = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
        *picking += pick_start.elapsed();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// When the load reported each step: the file opened (progress 0.05), the tokenizer built
/// (0.15), then each layer's weights (up to 0.95, repacking included).
#[derive(Default)]
struct LoadSteps {
    reported: Vec<(f32, Instant)>,
}

impl LoadObserver for LoadSteps {
    fn progress(&mut self, fraction: f32) -> bool {
        self.reported.push((fraction, Instant::now()));
        true
    }
    fn log(&mut self, _level: LogLevel, _message: &str) {}
}

impl LoadSteps {
    fn print(&self, start: Instant, total_ms: f64) {
        let at = |fraction: f32| {
            self.reported
                .iter()
                .find(|(f, _)| *f >= fraction - 1e-6)
                .map_or(total_ms, |(_, t)| (*t - start).as_secs_f64() * 1000.0)
        };
        let (file, tokenizer) = (at(0.05), at(0.15));
        let weights = self
            .reported
            .iter()
            .rfind(|(f, _)| *f <= 0.95 + 1e-6)
            .map_or(total_ms, |(_, t)| (*t - start).as_secs_f64() * 1000.0);
        eprintln!(
            "  load: open and parse the file {file:.1} ms, tokenizer {:.1} ms, weights (repacking \
             included) {:.1} ms, the rest {:.1} ms",
            tokenizer - file,
            weights - tokenizer,
            total_ms - weights
        );
    }
}

/// Where the time of a profiled run went, per part of the forward pass.
fn print_profile(name: &str, threads: usize, test: &str, profile: &OpProfile, picking: Duration) {
    let total: Duration = profile.time.iter().sum::<Duration>() + picking;
    let per_token = |d: Duration| d.as_secs_f64() * 1000.0 / profile.tokens.max(1) as f64;
    println!(
        "\n{name}, {threads} threads, {test}: {:.3} ms per token",
        per_token(total)
    );
    println!("| part | ms per token | share |");
    println!("|---|---|---|");
    let mut parts: Vec<(&str, Duration)> = Op::ALL
        .iter()
        .map(|&op| (op.name(), profile.time[op as usize]))
        .collect();
    if !picking.is_zero() {
        parts.push(("greedy pick over the logits", picking));
    }
    for (part, time) in parts {
        println!(
            "| {part} | {:.4} | {:.1} % |",
            per_token(time),
            100.0 * time.as_secs_f64() / total.as_secs_f64()
        );
    }
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

/// A constraint that times its own work: what it adds to each generated token.
struct TimedConstraint {
    inner: Box<dyn TokenConstraint>,
    /// Microseconds of compute_mask plus accept_token, one entry per generated token.
    step_us: Vec<f64>,
    pending_us: f64,
}

impl TokenConstraint for TimedConstraint {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        let start = Instant::now();
        let result = self.inner.compute_mask(mask);
        self.pending_us = start.elapsed().as_secs_f64() * 1e6;
        result
    }

    fn accept_token(&mut self, token: u32) -> Result<(), String> {
        let start = Instant::now();
        let result = self.inner.accept_token(token);
        self.step_us
            .push(self.pending_us + start.elapsed().as_secs_f64() * 1e6);
        result
    }

    fn may_stop(&self) -> bool {
        self.inner.may_stop()
    }

    fn must_stop(&self) -> bool {
        self.inner.must_stop()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Constrained against unconstrained decoding of the same replies: `repetitions` replies at
/// temperature 0.8 (seeds 1..), each followed by an unconstrained run of the same length from
/// the same prompt (end-of-generation ignored, so both decode the same number of tokens).
fn json_schema_bench(
    engine: &Arc<Engine>,
    name: &str,
    threads: usize,
    schema_path: &str,
    repetitions: usize,
) -> Result<(), String> {
    let text = std::fs::read_to_string(schema_path).map_err(|e| format!("{schema_path}: {e}"))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{schema_path}: {e}"))?;
    let prompt = engine.tokenizer.encode(
        &format!("A JSON value that matches this schema, filled with realistic data.\nSchema: {text}\nJSON: "),
        true,
        false,
    );
    let (mut step_us, mut constrained_rates, mut free_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut replies_tokens = 0;
    for repetition in 0..repetitions {
        let mut request = GenerationRequest {
            prompt: prompt.clone(),
            sampling: SamplingParams {
                seed: 1 + repetition as u64,
                ..SamplingParams::default()
            },
            max_tokens: 256,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            top_logprobs: None,
            prompt_logprobs: false,
            started_at: Instant::now(),
            shared_prefix: 0,
        };
        let mut timed = TimedConstraint {
            inner: json_schema_constraint(engine, &schema).map_err(|e| e.to_string())?,
            step_us: Vec::new(),
            pending_us: 0.0,
        };
        let mut cache = engine.new_cache();
        let constrained = engine
            .generate(&mut cache, &request, Some(&mut timed), &mut NoEvents)
            .map_err(|e| e.to_string())?;
        step_us.extend(timed.step_us);
        replies_tokens += constrained.usage.completion_tokens;
        constrained_rates.push(constrained.usage.decode_tokens_per_second());
        if repetition == 0 {
            eprintln!(
                "reply 1 ({} tokens): {}",
                constrained.usage.completion_tokens, constrained.text
            );
        }
        request.max_tokens = constrained.usage.completion_tokens;
        request.ignore_eos = true;
        request.started_at = Instant::now();
        let mut cache = engine.new_cache();
        let free = engine
            .generate(&mut cache, &request, None, &mut NoEvents)
            .map_err(|e| e.to_string())?;
        free_rates.push(free.usage.decode_tokens_per_second());
    }
    step_us.sort_by(f64::total_cmp);
    let (constrained, _) = median_and_spread(constrained_rates);
    let (free, _) = median_and_spread(free_rates);
    println!(
        "| {name} | {threads} | json schema {schema_path} | constraint per token: median {:.1} µs, p99 {:.1} µs ({} tokens in {repetitions} replies) | decode {constrained:.2} t/s constrained, {free:.2} t/s unconstrained ({:.0} %) |",
        percentile(&step_us, 0.5),
        percentile(&step_us, 0.99),
        replies_tokens,
        100.0 * constrained / free
    );
    Ok(())
}

/// A system prompt of about 330 tokens (SmolLM2's tokenizer).
fn long_system_prompt() -> String {
    let mut prompt = String::from(
        "You are the help desk of the Riverside Public Library. Answer in one short sentence. Rules:",
    );
    for i in 1..=24 {
        prompt.push_str(&format!(
            " {i}. Rule number {i} of the library applies to room {} on floor {} and lasts {} weeks.",
            i * 3,
            i % 4,
            i % 5 + 1
        ));
    }
    prompt
}

/// Time to first token (ms) of `chats` chats with one long system prompt, one question each:
/// (chat 1, the median of the others, the system turn's cached tokens in chat 2).
/// What `shared_chat_ttft` measured of one round.
struct SharedChats {
    /// Time to first token of the first chat, and the median of the others', in ms.
    first_ms: f64,
    others_ms: f64,
    /// Cached tokens of the second chat's turn.
    cached: usize,
    /// KV bytes the engine's chats hold at the end, and of those the shared rows.
    kv_bytes: usize,
    shared_bytes: usize,
}

fn shared_chat_ttft(engine: &Arc<Engine>, chats: usize) -> Result<SharedChats, String> {
    let options = serde_json::json!({"system_prompt": long_system_prompt(), "temperature": 0, "max_tokens": 4})
        .to_string();
    // Every chat stays alive until the end: a dropped chat's cache has nothing to share.
    let mut alive = Vec::new();
    let mut ttft = Vec::new();
    let mut cached = 0;
    for i in 0..chats {
        let chat = Chat::create(Arc::clone(engine), Some(&options)).map_err(|e| e.to_string())?;
        let request = serde_json::json!({"messages": [{"role": "user", "content": format!("Where is room {}?", i * 3)}]});
        let (_, usage) = chat
            .send(&request.to_string(), Instant::now(), &mut NoEvents)
            .map_err(|e| e.to_string())?;
        if i == 1 {
            cached = usage.cached_tokens;
        }
        ttft.push(usage.time_to_first_token_ms);
        alive.push(chat);
    }
    let (others_ms, _) = median_and_spread(ttft[1..].to_vec());
    let held = engine.kv_budget().stats();
    Ok(SharedChats {
        first_ms: ttft[0],
        others_ms,
        cached,
        kv_bytes: held.used_bytes,
        shared_bytes: held.shared_bytes,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut peers = Vec::new();
    for (peer, file) in &args.compare {
        match std::fs::read_to_string(file)
            .map_err(|e| format!("{file}: {e}"))
            .and_then(|text| chart::read_llama_bench(peer, &text))
        {
            Ok(engine) => peers.push(engine),
            Err(e) => {
                eprintln!("--compare: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut ours = chart::Engine {
        name: "smallmind".to_string(),
        results: Vec::new(),
    };
    let mut chat_turns: Option<chart::Turns> = None;
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
        let mut load_steps = LoadSteps::default();
        let engine = match Engine::load(&options, &mut load_steps) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let load_ms = load_start.elapsed().as_secs_f64() * 1000.0;
        // One warm-up of each, as llama-bench does.
        prefill_rate(
            &engine,
            args.prompt_tokens.min(64),
            &mut ForwardScratch::default(),
        );
        decode_rate(
            &engine,
            4,
            &mut ForwardScratch::default(),
            &mut Duration::default(),
        );
        if args.prompt_tokens > 0 {
            let (m, s) = median_and_spread(
                (0..args.repetitions)
                    .map(|_| {
                        prefill_rate(&engine, args.prompt_tokens, &mut ForwardScratch::default())
                    })
                    .collect(),
            );
            println!(
                "| {name} | {threads} | pp{} | {m:.2} | {s:.2} |",
                args.prompt_tokens
            );
            ours.results
                .push((format!("pp{}", args.prompt_tokens), threads, m));
        }
        if args.gen_tokens > 0 {
            let (m, s) = median_and_spread(
                (0..args.repetitions)
                    .map(|_| {
                        decode_rate(
                            &engine,
                            args.gen_tokens,
                            &mut ForwardScratch::default(),
                            &mut Duration::default(),
                        )
                    })
                    .collect(),
            );
            println!(
                "| {name} | {threads} | tg{} | {m:.2} | {s:.2} |",
                args.gen_tokens
            );
            ours.results
                .push((format!("tg{}", args.gen_tokens), threads, m));
        }
        eprintln!("threads {threads}: load {load_ms:.0} ms");
        if args.profile {
            load_steps.print(load_start, load_ms);
            let profiled = || {
                let mut scratch = ForwardScratch::default();
                scratch.profile = Some(OpProfile::default());
                scratch
            };
            if args.prompt_tokens > 0 {
                let mut scratch = profiled();
                prefill_rate(&engine, args.prompt_tokens, &mut scratch);
                let test = format!("pp{}", args.prompt_tokens);
                let profile = scratch.profile.expect("set above");
                print_profile(&name, threads, &test, &profile, Duration::ZERO);
            }
            if args.gen_tokens > 0 {
                let (mut scratch, mut picking) = (profiled(), Duration::ZERO);
                decode_rate(&engine, args.gen_tokens, &mut scratch, &mut picking);
                let test = format!("tg{}", args.gen_tokens);
                let profile = scratch.profile.expect("set above");
                print_profile(&name, threads, &test, &profile, picking);
            }
        }
        if let Some(schema_path) = &args.json_schema
            && let Err(e) =
                json_schema_bench(&engine, &name, threads, schema_path, args.repetitions)
        {
            eprintln!("json schema: {e}");
            return ExitCode::FAILURE;
        }
        if args.shared_chats >= 2 {
            let mut unshared_options = options.clone();
            unshared_options.share_prefixes = false;
            let unshared = match Engine::load(&unshared_options, &mut SilentLoad) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // Per round: chat 1 sharing, chats 2..N sharing, chats 2..N not sharing.
            let (mut first, mut sharing, mut alone) = (Vec::new(), Vec::new(), Vec::new());
            let (mut cached, mut bytes_sharing, mut shared_bytes, mut bytes_alone) = (0, 0, 0, 0);
            for _ in 0..args.repetitions {
                match (
                    shared_chat_ttft(&engine, args.shared_chats),
                    shared_chat_ttft(&unshared, args.shared_chats),
                ) {
                    (Ok(shared), Ok(not_shared)) => {
                        first.push(shared.first_ms);
                        sharing.push(shared.others_ms);
                        alone.push(not_shared.others_ms);
                        cached = shared.cached;
                        (bytes_sharing, shared_bytes) = (shared.kv_bytes, shared.shared_bytes);
                        bytes_alone = not_shared.kv_bytes;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("shared chats: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
            println!(
                "| {name} | {threads} | {} chats, one system prompt | chat 1 TTFT {:.1} ms | chats 2..{}: TTFT {:.1} ms sharing ({cached} cached tokens), {:.1} ms not sharing | KV held {:.1} MiB sharing ({:.1} MiB of it shared), {:.1} MiB not sharing |",
                args.shared_chats,
                median_and_spread(first).0,
                args.shared_chats,
                median_and_spread(sharing).0,
                median_and_spread(alone).0,
                mib(bytes_sharing),
                mib(shared_bytes),
                mib(bytes_alone),
            );
        }
        if args.chat_turns > 0 {
            let mut turns_of_this_engine = chart::Turns {
                cached: Vec::new(),
                uncached: Vec::new(),
            };
            for kv_cache in [true, false] {
                match chat_ttft(&engine, args.chat_turns, kv_cache) {
                    Ok(turns) => {
                        let ms = turns.iter().map(|t| t.0).collect();
                        if kv_cache {
                            turns_of_this_engine.cached = ms;
                        } else {
                            turns_of_this_engine.uncached = ms;
                        }
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
            // The chart shows the last thread count's turns.
            chat_turns = Some(turns_of_this_engine);
        }
    }
    if let Some(rss) = peak_rss_mib() {
        println!("\npeak RSS: {rss:.1} MiB");
    }
    if let Some(path) = &args.chart {
        let mut engines = vec![ours];
        engines.extend(peers);
        let title = format!("{name} on {}", cpu_name());
        if let Err(e) = std::fs::write(path, chart::svg(&title, &engines, chat_turns.as_ref())) {
            eprintln!("--chart: {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
