//! Builds the C test programs and the examples against the shared library with
//! `-std=c11 -Wall -Wextra -Werror -pedantic` (and once more under AddressSanitizer + UBSan)
//! and runs them.

#[path = "support/models.rs"]
mod models;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

/// AddressSanitizer + UBSan, every UB report fatal.
const SANITIZERS: &[&str] = &[
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=undefined",
];

/// The programs run the real model on a machine with few cores: the tests here run one at a
/// time (builds included), so that one's load cannot skew the time-to-first-token figures
/// another compares.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The directory holding libsmallmind.so. Cargo builds the library's cdylib next to this test
/// executable (target/<profile>/deps) from the same source, so that copy is never stale;
/// `cargo build` also copies it one level up.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps").to_path_buf();
    let candidates = [
        deps.clone(),
        deps.parent().expect("target/<profile>").to_path_buf(),
    ];
    let dir = candidates
        .iter()
        .find(|dir| dir.join("libsmallmind.so").exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} has no libsmallmind.so; build the library first (`cargo build --release`)",
                deps.display()
            )
        });
    // The library's soname is libsmallmind.so.0 (build.rs): a program linked with -lsmallmind
    // loads that name, which cargo does not lay out, so a link to the build's copy stands in.
    let soname = dir.join("libsmallmind.so.0");
    match std::os::unix::fs::symlink("libsmallmind.so", &soname) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot link {}: {e}", soname.display()),
    }
    dir
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    let dir = library_dir().join("c-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `sources` into `name`, linked against the shared library.
fn compile(name: &str, sources: &[&str], extra_flags: &[&str]) -> PathBuf {
    let lib_dir = library_dir();
    let output = out_dir().join(name);
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .args(extra_flags)
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-I")
        .arg(repo().join("tests/c"));
    for s in sources {
        cmd.arg(repo().join(s));
    }
    cmd.arg("-o")
        .arg(&output)
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lsmallmind", "-lpthread", "-lm"]);
    let result = cmd.output().expect("run the C compiler");
    assert!(
        result.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    output
}

/// What a program printed.
struct Output {
    stdout: String,
    stderr: String,
}

/// Runs `program` to its end (feeding it `stdin`), asserting that it succeeded.
fn run_with_input(program: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C program");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("write the program's input");
    let result = child.wait_with_output().expect("run the C program");
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(
        result.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        result.status
    );
    Output { stdout, stderr }
}

/// Runs `program` with `SMALLMIND_DEBUG_INJECT_PANIC` naming the session whose forward pass
/// panics.
fn run_with_injected_panic(program: &Path, args: &[&str], session: &str) -> Output {
    let result = Command::new(program)
        .args(args)
        .env("SMALLMIND_DEBUG_INJECT_PANIC", session)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(
        result.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        result.status
    );
    Output { stdout, stderr }
}

fn synthetic_model() -> String {
    path_arg(&models::oracle_dir().join("synthetic/synth-llama3-q8_0.gguf")).to_string()
}

#[test]
fn a_chat_survives_a_panic_in_its_forward_pass() {
    let _alone = exclusive();
    for (name, flags) in [("test_panic", &[][..]), ("test_panic_asan", SANITIZERS)] {
        let program = compile(name, &["tests/c/test_panic.c"], flags);
        let out = run_with_injected_panic(&program, &[&synthetic_model()], "victim");
        assert!(
            out.stdout.contains(" 0 failed"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

/// Runs `program` under valgrind memcheck: any memory error, or any definite or indirect
/// leak, fails. (Rust's std keeps a few allocations alive until exit on purpose: those are
/// "still reachable" and not counted.)
fn run_under_valgrind(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let result = Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--quiet",
        ])
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run valgrind (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(
        result.status.success(),
        "{} under valgrind failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        result.status
    );
    Output { stdout, stderr }
}

#[test]
fn c_programs_are_clean_under_valgrind_memcheck() {
    let _alone = exclusive();
    let model = synthetic_model();
    // The panic test: a caught panic, its message through the pool, reset, four chats.
    let program = compile("test_panic_valgrind", &["tests/c/test_panic.c"], &[]);
    let out = run_under_valgrind(
        &program,
        &[&model],
        &[("SMALLMIND_DEBUG_INJECT_PANIC", "victim")],
    );
    assert!(
        out.stdout.contains(" 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // The examples that take any model: load, complete, stream, free.
    let complete = compile("complete_valgrind", &["examples-c/complete.c"], &[]);
    let out = run_under_valgrind(&complete, &[&model, "Hello", "4"], &[]);
    assert!(out.stderr.contains("4 generated tokens"), "{}", out.stderr);
}

fn run(program: &Path, args: &[&str]) -> Output {
    run_with_input(program, args, "")
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn not_a_gguf_file() -> PathBuf {
    let path = out_dir().join("not-a-model.gguf");
    std::fs::write(&path, b"this is a text file, not a GGUF model\n").unwrap();
    path
}

fn smollm2() -> String {
    path_arg(&models::smollm2()).to_string()
}

#[test]
fn c_engine_tests_pass() {
    let _alone = exclusive();
    let program = compile("test_engine", &["tests/c/test_engine.c"], &[]);
    let out = run(&program, &[&smollm2(), path_arg(&not_a_gguf_file())]);
    assert!(out.stdout.contains(" 0 failed"), "{}", out.stdout);
}

#[test]
fn c_engine_tests_pass_under_address_and_undefined_behaviour_sanitizers() {
    let _alone = exclusive();
    let program = compile("test_engine_asan", &["tests/c/test_engine.c"], SANITIZERS);
    let out = run(&program, &[&smollm2(), path_arg(&not_a_gguf_file())]);
    assert!(out.stdout.contains(" 0 failed"), "{}", out.stdout);
}

/// llama.cpp's chat case "c" for the default model: the prompt ids its run of the model's own
/// template gave (comma-separated), the user message, and the greedy reply.
struct OracleChatCase {
    prompt_ids: String,
    user: String,
    reply: String,
}

fn oracle_chat_case() -> OracleChatCase {
    let text = std::fs::read_to_string(models::oracle_dir().join("llamacpp-greedy.json"))
        .expect("the oracle file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the oracle is JSON");
    let case = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == "c" && c["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("the oracle has the chat case c");
    let ids: Vec<String> = case["prompt_token_ids"]
        .as_array()
        .expect("prompt ids")
        .iter()
        .map(|id| id.as_u64().expect("an id").to_string())
        .collect();
    assert_eq!(ids.len(), 37, "the oracle's chat prompt is 37 tokens");
    // The user turn of the prompt llama.cpp rendered.
    let prompt = case["prompt_text"].as_str().expect("prompt text");
    let user = prompt
        .split("<|im_start|>user\n")
        .nth(1)
        .and_then(|rest| rest.split("<|im_end|>").next())
        .expect("a user turn");
    OracleChatCase {
        prompt_ids: ids.join(","),
        user: user.to_string(),
        reply: case["generated_text"]
            .as_str()
            .expect("the reply")
            .to_string(),
    }
}

fn run_chat_tests(program: &Path) {
    let oracle = oracle_chat_case();
    let out = run(
        program,
        &[
            &smollm2(),
            path_arg(&not_a_gguf_file()),
            &oracle.prompt_ids,
            &oracle.user,
            &oracle.reply,
        ],
    );
    eprintln!("{}", out.stdout);
    assert!(
        out.stdout.contains("test_chat: ") && out.stdout.contains(" 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn c_chat_tests_pass() {
    let _alone = exclusive();
    run_chat_tests(&compile("test_chat", &["tests/c/test_chat.c"], &[]));
}

#[test]
fn c_chat_tests_pass_under_address_and_undefined_behaviour_sanitizers() {
    let _alone = exclusive();
    run_chat_tests(&compile(
        "test_chat_asan",
        &["tests/c/test_chat.c"],
        SANITIZERS,
    ));
}

fn fixture_v1() -> String {
    path_arg(&repo().join("tests/fixtures/chat-export-v1.json")).to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = out_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_persist_tests(name: &str, flags: &[&str]) {
    let program = compile(name, &["tests/c/test_persist.c"], flags);
    let dir = scratch(&format!("{name}-files"));
    let out = run(&program, &[&smollm2(), &fixture_v1(), path_arg(&dir)]);
    assert!(
        out.stdout.contains("test_persist: ") && out.stdout.contains(" 0 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn c_persistence_and_budget_tests_pass() {
    let _alone = exclusive();
    run_persist_tests("test_persist", &[]);
}

#[test]
fn c_persistence_and_budget_tests_pass_under_address_and_undefined_behaviour_sanitizers() {
    let _alone = exclusive();
    run_persist_tests("test_persist_asan", SANITIZERS);
}

/// A host built against the header from before the tool fields (a smaller struct_size).
#[test]
fn a_host_compiled_against_the_header_before_the_tool_fields_works() {
    let _alone = exclusive();
    for (name, flags) in [
        ("test_old_header", &[][..]),
        ("test_old_header_asan", SANITIZERS),
    ] {
        let program = compile(name, &["tests/c/test_old_header.c"], flags);
        let out = run(&program, &[&smollm2()]);
        assert!(
            out.stdout.contains(" 0 failed"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

/// Tool calling and retrieval through the C callbacks.
#[test]
fn c_tool_tests_pass() {
    let _alone = exclusive();
    for (name, flags) in [("test_tools", &[][..]), ("test_tools_asan", SANITIZERS)] {
        let program = compile(name, &["tests/c/test_tools.c"], flags);
        let out = run(&program, &[&smollm2()]);
        eprintln!("{}", out.stdout);
        assert!(
            out.stdout.contains(" 0 failed"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

/// Every program in examples-c/, built and run as a user would (short replies).
fn run_examples(suffix: &str, flags: &[&str]) {
    let model = smollm2();
    let build = |name: &str| {
        compile(
            &format!("{name}{suffix}"),
            &[&format!("examples-c/{name}.c")],
            flags,
        )
    };

    let complete = run(
        &build("complete"),
        &[&model, "The capital of France is", "4"],
    );
    assert!(
        complete
            .stdout
            .starts_with("The capital of France is Paris."),
        "{}",
        complete.stdout
    );
    assert!(
        complete.stderr.contains("4 generated tokens"),
        "{}",
        complete.stderr
    );

    // Scripted: one prompt on the command line, one answer (greedy: llama.cpp's reply).
    let chat = build("chat");
    let answer = run(
        &chat,
        &[
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            &model,
            "What is 2+2?",
        ],
    );
    assert_eq!(
        answer.stdout, "The answer to this classic math problem is 4.\n",
        "{}",
        answer.stderr
    );
    assert!(
        answer
            .stderr
            .contains("[prompt 37 tokens, 0 cached | completion 12 tokens | first token "),
        "one usage line per turn: {}",
        answer.stderr
    );
    // Interactive: lines on stdin are turns; the second reuses the first's cache; /reset forgets.
    let session = run_with_input(
        &chat,
        &["--max-tokens", "4", "--temperature", "0", &model],
        "Name a fruit.\nName a color.\n/reset\nWhat is 2+2?\n/quit\nNot sent.\n",
    );
    let usage_lines: Vec<&str> = session
        .stderr
        .lines()
        .filter(|l| l.starts_with("[prompt "))
        .collect();
    assert_eq!(
        usage_lines.len(),
        3,
        "one usage line per turn: {}",
        session.stderr
    );
    assert!(
        usage_lines[0].contains(" 0 cached") && !usage_lines[1].contains(" 0 cached"),
        "{usage_lines:?}"
    );
    assert!(
        usage_lines[2].starts_with("[prompt 37 tokens, 0 cached"),
        "reset forgets the conversation: {usage_lines:?}"
    );
    assert!(
        session.stderr.contains("[conversation forgotten]"),
        "{}",
        session.stderr
    );
    assert!(
        session.stdout.contains("The answer to"),
        "{}",
        session.stdout
    );

    let telemetry = run(&build("telemetry"), &[&model]);
    for callback in [
        "on_load_progress      1.00",
        "on_log                [info] loaded llama",
        "on_request_start      session=demo messages=1",
        "on_kv_cache_access    session=demo hit=no cached_tokens=0",
        "on_kv_cache_access    session=demo hit=yes",
        "on_context_policy_applied session=demo policy=keep_all",
        "on_context_policy_applied session=demo policy=keep_last_n_turns",
        "on_first_token        session=demo elapsed_ms=",
        "on_token              #1 ",
        "on_request_complete   session=demo prompt_tokens=",
        "\"dropped_messages\":4",
    ] {
        assert!(
            telemetry.stdout.contains(callback),
            "telemetry prints `{callback}`:\n{}",
            telemetry.stdout
        );
    }

    let tools = run(&build("tools"), &[&model]);
    assert!(
        tools
            .stdout
            .contains("\"name\":\"calculator\",\"arguments\":{\"expression\":\"17*23\"}} -> 391")
            && tools.stdout.contains("[on_tool_call] calculator took ")
            && tools.stdout.contains("\"tool_results\":[{"),
        "{}",
        tools.stdout
    );
    let rag = run(&build("rag"), &[&model]);
    assert!(
        rag.stdout
            .contains("[retrieve] \"When does the museum open?\" -> 2 chunk(s)")
            && rag.stdout.contains("9:00"),
        "{}",
        rag.stdout
    );
    // A record out of free text: the first line is the reply, valid against the example's
    // schema (copied here), and the field lines are read from it.
    let json = run(&build("json"), &[&model]);
    let mut lines = json.stdout.lines();
    let record: serde_json::Value =
        serde_json::from_str(lines.next().expect("a record line")).expect("the record is JSON");
    let schema = serde_json::json!({
        "type": "object", "additionalProperties": false,
        "required": ["name", "age", "city", "email"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "city": {"type": "string", "maxLength": 40},
            "email": {"type": "string", "pattern": "^[a-z.]+@[a-z]+\\.[a-z]+$"}
        }
    });
    assert!(
        jsonschema::is_valid(&schema, &record),
        "{record} against {schema}"
    );
    let fields: Vec<String> = lines.map(str::to_string).collect();
    let expected: Vec<String> = ["name", "age", "city", "email"]
        .iter()
        .map(|key| format!("{key:<6} {}", record[key]))
        .collect();
    assert_eq!(fields, expected, "{}", json.stdout);
    // A chat that survives restarts: the second run resumes the first's conversation and
    // its KV cache from the file.
    let persist = build("persist");
    let dir = scratch(&format!("persist{suffix}-state"));
    let state = dir.join("chat.smchat");
    let first = run(
        &persist,
        &[&model, path_arg(&state), "What is the capital of France?"],
    );
    assert!(
        first.stderr.contains("[new conversation]"),
        "{}",
        first.stderr
    );
    assert!(first.stderr.contains("[saved to "), "{}", first.stderr);
    let second = run(&persist, &[&model, path_arg(&state), "And of Italy?"]);
    assert!(
        second.stderr.contains("[resumed ") && second.stderr.contains(": 2 messages]"),
        "user, assistant (the system_prompt option is rendered, not recorded): {}",
        second.stderr
    );
    let usage = second
        .stderr
        .lines()
        .find(|l| l.starts_with("[prompt "))
        .expect("a usage line");
    assert!(
        !usage.contains(" 0 cached"),
        "the saved KV cache is reused: {usage}"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("chat.smchat")],
        "no temporary file"
    );

    let threads = run(&build("threads"), &[&model]);
    for thread in ["[thread 1] ", "[thread 2] "] {
        assert_eq!(
            threads.stdout.matches(thread).count(),
            4,
            "two replies and usage lines each:\n{}",
            threads.stdout
        );
    }
    assert!(
        threads.stdout.contains(" cached;") && !threads.stdout.contains("prompt 0 tokens"),
        "{}",
        threads.stdout
    );
}

#[test]
fn examples_build_and_run() {
    let _alone = exclusive();
    run_examples("", &["-O2"]);
}

#[test]
fn examples_build_and_run_under_address_and_undefined_behaviour_sanitizers() {
    let _alone = exclusive();
    run_examples("_asan", SANITIZERS);
}
