//! Token ids against llama.cpp's for SmolLM2 (byte-level BPE, `smollm`), Gemma 3
//! (SentencePiece) and the synthetic models (four BPE pre-tokenizers).

#[path = "support/models.rs"]
mod models;

use serde_json::Value;
use smallmind::gguf::GgufFile;
use smallmind::tokenizer::Tokenizer;

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(models::oracle_dir().join(path)).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn tokenizer(path: &std::path::Path) -> Tokenizer {
    let start = std::time::Instant::now();
    let file = GgufFile::open(path, true).unwrap();
    let t = Tokenizer::from_gguf(&file).unwrap();
    eprintln!(
        "{}: parse + tokenizer build {:.1} ms",
        path.display(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    t
}

fn check_cases(model_file: &str, path: &std::path::Path) {
    let t = tokenizer(path);
    let oracle = json("llamacpp-greedy.json");
    let mut n = 0;
    for case in oracle["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["model"] == model_file)
    {
        let text = case["prompt_text"].as_str().unwrap();
        let expected = ids(&case["prompt_token_ids"]);
        let got = t.encode(text, true, case["parse_special"].as_bool().unwrap());
        assert_eq!(got, expected, "case {}: {text:?}", case["id"]);
        // Pieces: a string, or raw bytes for pieces that are not UTF-8 alone.
        for (id, piece) in got
            .iter()
            .zip(case["prompt_token_pieces"].as_array().unwrap())
        {
            let bytes: Vec<u8> = match piece {
                Value::String(s) => s.as_bytes().to_vec(),
                other => other
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
                    .collect(),
            };
            assert_eq!(
                t.token_to_piece(*id, true),
                bytes.as_slice(),
                "case {} token {id}",
                case["id"]
            );
        }
        let first_content = usize::from(case["add_bos"].as_bool().unwrap());
        assert_eq!(
            String::from_utf8(t.decode(&got[first_content..], true)).unwrap(),
            text,
            "case {} round trip",
            case["id"]
        );
        n += 1;
    }
    assert!(n >= 4, "{model_file}: {n} cases");
}

#[test]
fn smollm2_token_ids_equal_llama_cpps() {
    check_cases("SmolLM2-135M-Instruct.Q4_1.gguf", &models::smollm2());
}

#[test]
fn gemma3_token_ids_equal_llama_cpps() {
    check_cases("gemma-3-270m-q4_k_m.gguf", &models::gemma3());
}

#[test]
fn synthetic_models_token_ids_equal_llama_cpps_for_every_pre_tokenizer() {
    let oracle = json("synthetic/llamacpp-synthetic.json");
    for model in oracle["models"].as_array().unwrap() {
        let file = model["file"].as_str().unwrap();
        let t = tokenizer(&models::oracle_dir().join("synthetic").join(file));
        for case in model["cases"].as_array().unwrap() {
            let text = case["prompt_text"].as_str().unwrap();
            assert_eq!(
                t.encode(text, true, true),
                ids(&case["prompt_token_ids"]),
                "{file} case {}: {text:?}",
                case["id"]
            );
        }
    }
}
