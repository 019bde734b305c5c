//! Context policies: which messages of a conversation go into the prompt when it is too
//! long. Deterministic; system messages are pinned; whole turns are dropped oldest first;
//! room is kept for the reply.

use serde::{Deserialize, Serialize};

use super::message::{Message, Role};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContextPolicy {
    /// Never drop anything; a prompt that does not fit is an error. A struct variant with no
    /// fields, so that a stray field such as `{"type":"keep_all","max_turns":3}` is refused
    /// instead of being silently ignored (serde ignores extra fields on unit variants). The
    /// default.
    KeepAll {},
    /// Keep the newest turn (the one being answered) and at most `max_turns` turns before it
    /// (then drop more if still too long). `max_turns: 0` keeps only the newest turn.
    KeepLastNTurns { max_turns: u32 },
    /// Keep the newest turns whose prompt fits in `max_tokens` (also accepted as
    /// `window_tokens`, the clearer name: it is the prompt's window, not the reply's length).
    SlidingWindow {
        #[serde(alias = "window_tokens")]
        max_tokens: u32,
    },
}

impl Default for ContextPolicy {
    fn default() -> Self {
        Self::KeepAll {}
    }
}

impl ContextPolicy {
    pub fn name(&self) -> &'static str {
        match self {
            Self::KeepAll {} => "keep_all",
            Self::KeepLastNTurns { .. } => "keep_last_n_turns",
            Self::SlidingWindow { .. } => "sliding_window",
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::SlidingWindow { max_tokens: 0 } => Err(Error::invalid_argument(
                "context_policy.window_tokens (max_tokens) must be at least 1",
            )),
            _ => Ok(()),
        }
    }
}

/// What the policy kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// Indices into the input messages, in order.
    pub kept: Vec<usize>,
    pub dropped: Vec<usize>,
    /// Prompt tokens of the whole conversation.
    pub tokens_before: u32,
    /// Prompt tokens of what was kept.
    pub tokens_after: u32,
}

/// Groups non-system messages into turns: a user message and everything up to the next one.
/// Messages before the first user message form a turn of their own.
fn turns(messages: &[Message]) -> Vec<Vec<usize>> {
    let mut turns: Vec<Vec<usize>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role == Role::System {
            continue;
        }
        if m.role == Role::User || turns.is_empty() {
            turns.push(Vec::new());
        }
        turns.last_mut().expect("a turn was just pushed").push(i);
    }
    turns
}

/// The sizes an overflow is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextLimits {
    /// Positions the session's KV cache holds.
    pub context: u32,
    /// The option that sets `context`: "context_length" (engine) or "max_kv_tokens" (chat).
    pub context_option: &'static str,
    /// Tokens kept free for the reply (the turn's max_tokens).
    pub reserve: u32,
}

/// The overflow error: which limit was hit and only the fixes that would help.
/// `prompt` is the smallest prompt the policy may keep; `window` the sliding window;
/// `can_drop` whether another policy could drop older turns.
fn overflow(
    prompt: u32,
    limits: ContextLimits,
    window: Option<u32>,
    can_drop: bool,
    what: &str,
) -> Error {
    let ContextLimits {
        context,
        context_option,
        reserve,
    } = limits;
    let needed = u64::from(prompt) + u64::from(reserve);
    let mut problems: Vec<String> = Vec::new();
    let mut fixes: Vec<String> = Vec::new();
    if needed > u64::from(context) {
        problems.push(if reserve >= context {
            format!(
                "max_tokens {reserve} reserves the whole context ({context} tokens, set by {context_option}) for the reply, leaving no room for {what} ({prompt} tokens)"
            )
        } else if prompt >= context {
            format!(
                "{what} is {prompt} tokens, more than the context holds ({context} tokens, set by {context_option})"
            )
        } else {
            format!(
                "{what} is {prompt} tokens + {reserve} reserved for the reply, but the context holds {context} tokens (set by {context_option})"
            )
        });
        if prompt < context {
            fixes.push(format!("lower max_tokens to at most {}", context - prompt));
        }
        fixes.push(format!("raise {context_option} to at least {needed}"));
    }
    if let Some(window) = window.filter(|&w| prompt > w) {
        problems.push(format!(
            "{what} is {prompt} tokens, more than the sliding window's window_tokens {window}"
        ));
        fixes.push(format!("raise window_tokens to at least {prompt}"));
    }
    // With the reply's room filling the context, no prompt is short enough.
    if reserve < context {
        fixes.push("shorten the messages".to_string());
    }
    if can_drop && reserve < context {
        fixes.push(
            "use context_policy sliding_window or keep_last_n_turns to drop older turns".into(),
        );
    }
    let last = fixes.pop().unwrap_or_default();
    let advice = if fixes.is_empty() {
        last
    } else {
        format!("{}, or {last}", fixes.join(", "))
    };
    Error::new(
        ErrorKind::ContextOverflow,
        format!("{}: {advice}", problems.join("; and ")),
    )
}

/// Chooses the messages to render. `token_count(indices)` is the prompt length of those
/// messages rendered; it is called once per dropped turn at most, plus once.
pub fn apply_policy(
    policy: &ContextPolicy,
    messages: &[Message],
    limits: ContextLimits,
    token_count: &mut dyn FnMut(&[usize]) -> Result<u32>,
) -> Result<PolicyOutcome> {
    policy.validate()?;
    let all: Vec<usize> = (0..messages.len()).collect();
    let tokens_before = token_count(&all)?;
    let budget = limits.context.saturating_sub(limits.reserve);
    let window = match policy {
        ContextPolicy::SlidingWindow { max_tokens } => Some(*max_tokens),
        _ => None,
    };
    let limit = window.map_or(budget, |w| budget.min(w));
    let turns = turns(messages);
    if let ContextPolicy::KeepAll {} = policy {
        if tokens_before > budget {
            return Err(overflow(
                tokens_before,
                limits,
                None,
                turns.len() > 1,
                "the conversation",
            ));
        }
        return Ok(PolicyOutcome {
            kept: all,
            dropped: Vec::new(),
            tokens_before,
            tokens_after: tokens_before,
        });
    }

    let pinned: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| messages[i].role == Role::System)
        .collect();
    // The newest turn (the one being answered) is always kept and not counted.
    let max_turns = match policy {
        ContextPolicy::KeepLastNTurns { max_turns } => *max_turns as usize,
        _ => usize::MAX,
    };
    let mut first_turn = turns.len().saturating_sub(max_turns.saturating_add(1));
    let select = |first: usize| -> Vec<usize> {
        let mut kept: Vec<usize> = pinned
            .iter()
            .copied()
            .chain(turns[first..].iter().flatten().copied())
            .collect();
        kept.sort_unstable();
        kept
    };
    let mut kept = select(first_turn);
    let mut tokens = if kept.len() == messages.len() {
        tokens_before
    } else {
        token_count(&kept)?
    };
    while tokens > limit {
        if first_turn + 1 >= turns.len() {
            return Err(overflow(
                tokens,
                limits,
                window,
                false,
                "the system messages and the last turn",
            ));
        }
        first_turn += 1;
        kept = select(first_turn);
        tokens = token_count(&kept)?;
    }
    let dropped = all
        .into_iter()
        .filter(|i| kept.binary_search(i).is_err())
        .collect();
    Ok(PolicyOutcome {
        kept,
        dropped,
        tokens_before,
        tokens_after: tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<Message> {
        vec![
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "u1"),
            Message::new(Role::Assistant, "a1"),
            Message::new(Role::User, "u2"),
            Message::new(Role::Assistant, "a2"),
            Message::new(Role::Tool, "t2"),
            Message::new(Role::User, "u3"),
        ]
    }

    fn limits(context: u32, reserve: u32) -> ContextLimits {
        ContextLimits {
            context,
            context_option: "context_length",
            reserve,
        }
    }

    /// Ten tokens per message.
    fn count(calls: &mut usize) -> impl FnMut(&[usize]) -> Result<u32> + '_ {
        move |kept: &[usize]| {
            *calls += 1;
            Ok(kept.len() as u32 * 10)
        }
    }

    #[test]
    fn keep_all_keeps_everything_or_names_both_sizes() {
        let mut calls = 0;
        let out = apply_policy(
            &ContextPolicy::KeepAll {},
            &conversation(),
            limits(100, 20),
            &mut count(&mut calls),
        )
        .unwrap();
        assert_eq!(out.kept.len(), 7);
        let err = apply_policy(
            &ContextPolicy::KeepAll {},
            &conversation(),
            limits(80, 20),
            &mut count(&mut calls),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContextOverflow);
        assert!(
            err.message.contains("70 tokens + 20 reserved") && err.message.contains("holds 80"),
            "{}",
            err.message
        );
    }

    #[test]
    fn sliding_window_drops_whole_turns_oldest_first_and_pins_system() {
        let mut calls = 0;
        let policy = ContextPolicy::SlidingWindow { max_tokens: 45 };
        let out = apply_policy(
            &policy,
            &conversation(),
            limits(1000, 10),
            &mut count(&mut calls),
        )
        .unwrap();
        // Turn 2 (u2, a2, t2) is kept whole with sys and u3: 50 > 45, so it goes too.
        assert_eq!(out.kept, vec![0, 6]);
        assert_eq!(out.dropped, vec![1, 2, 3, 4, 5]);
        assert_eq!((out.tokens_before, out.tokens_after), (70, 20));
        assert!(calls <= 4, "{calls} token counts");
        let out = apply_policy(
            &ContextPolicy::SlidingWindow { max_tokens: 50 },
            &conversation(),
            limits(1000, 10),
            &mut count(&mut calls),
        )
        .unwrap();
        assert_eq!(
            out.kept,
            vec![0, 3, 4, 5, 6],
            "tool results stay with their turn"
        );
    }

    #[test]
    fn keep_last_n_turns_counts_turns_and_is_deterministic() {
        let mut calls = 0;
        // max_turns counts the turns before the one being answered (u3).
        let policy = ContextPolicy::KeepLastNTurns { max_turns: 1 };
        let a = apply_policy(
            &policy,
            &conversation(),
            limits(1000, 10),
            &mut count(&mut calls),
        )
        .unwrap();
        let b = apply_policy(
            &policy,
            &conversation(),
            limits(1000, 10),
            &mut count(&mut calls),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.kept, vec![0, 3, 4, 5, 6]);
        let only_new = ContextPolicy::KeepLastNTurns { max_turns: 0 };
        let out = apply_policy(
            &only_new,
            &conversation(),
            limits(1000, 10),
            &mut count(&mut calls),
        )
        .unwrap();
        assert_eq!(out.kept, vec![0, 6]);
    }

    #[test]
    fn policy_json_refuses_fields_that_do_not_belong_to_the_policy() {
        let parse = |json: &str| serde_json::from_str::<ContextPolicy>(json);
        assert_eq!(
            parse(r#"{"type":"keep_all"}"#).unwrap(),
            ContextPolicy::KeepAll {}
        );
        assert_eq!(
            parse(r#"{"type":"keep_last_n_turns","max_turns":3}"#).unwrap(),
            ContextPolicy::KeepLastNTurns { max_turns: 3 }
        );
        let err = parse(r#"{"type":"keep_all","max_turns":3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_turns"), "{err}");
        let err = parse(r#"{"type":"sliding_window","max_tokens":100,"max_turns":3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_turns"), "{err}");
        assert!(
            parse(r#"{"type":"sliding_window"}"#)
                .unwrap_err()
                .to_string()
                .contains("max_tokens")
        );
        assert!(
            parse(r#"{"type":"keep_everything"}"#)
                .unwrap_err()
                .to_string()
                .contains("keep_everything")
        );
        assert_eq!(
            serde_json::to_string(&ContextPolicy::KeepAll {}).unwrap(),
            r#"{"type":"keep_all"}"#
        );
    }

    #[test]
    fn the_last_turn_is_never_dropped_and_invalid_sizes_are_refused() {
        let mut calls = 0;
        let err = apply_policy(
            &ContextPolicy::SlidingWindow { max_tokens: 10 },
            &conversation(),
            limits(1000, 10),
            &mut count(&mut calls),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContextOverflow);
        assert!(
            err.message
                .contains("more than the sliding window's window_tokens 10")
                && err.message.contains("raise window_tokens to at least 20")
                && !err.message.contains("context_policy"),
            "{}",
            err.message
        );
        let err = ContextPolicy::SlidingWindow { max_tokens: 0 }
            .validate()
            .unwrap_err();
        assert!(err.message.contains("window_tokens"));
        assert_eq!(
            serde_json::from_str::<ContextPolicy>(r#"{"type":"sliding_window","window_tokens":7}"#)
                .unwrap(),
            ContextPolicy::SlidingWindow { max_tokens: 7 }
        );
    }
}
