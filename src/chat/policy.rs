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
    /// Keep at most `max_turns` turns (then drop more if still too long).
    KeepLastNTurns { max_turns: u32 },
    /// Keep the newest turns that fit in `max_tokens`.
    SlidingWindow { max_tokens: u32 },
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
            Self::KeepLastNTurns { max_turns: 0 } => Err(Error::invalid_argument(
                "context_policy.max_turns must be at least 1",
            )),
            Self::SlidingWindow { max_tokens: 0 } => Err(Error::invalid_argument(
                "context_policy.max_tokens must be at least 1",
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

fn overflow(prompt: u32, reserve: u32, context: u32, what: &str) -> Error {
    Error::new(
        ErrorKind::ContextOverflow,
        format!(
            "{what} is {prompt} tokens + {reserve} reserved for the reply, but the context holds {context} tokens; use context_policy sliding_window or keep_last_n_turns, shorten the messages, or lower max_tokens"
        ),
    )
}

/// Chooses the messages to render. `token_count(indices)` is the prompt length of those
/// messages rendered; it is called once per dropped turn at most, plus once.
pub fn apply_policy(
    policy: &ContextPolicy,
    messages: &[Message],
    context_length: u32,
    reserve_for_reply: u32,
    token_count: &mut dyn FnMut(&[usize]) -> Result<u32>,
) -> Result<PolicyOutcome> {
    policy.validate()?;
    let all: Vec<usize> = (0..messages.len()).collect();
    let tokens_before = token_count(&all)?;
    let budget = context_length.saturating_sub(reserve_for_reply);
    let limit = match policy {
        ContextPolicy::SlidingWindow { max_tokens } => budget.min(*max_tokens),
        _ => budget,
    };
    if let ContextPolicy::KeepAll {} = policy {
        if tokens_before > budget {
            return Err(overflow(
                tokens_before,
                reserve_for_reply,
                context_length,
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
    let turns = turns(messages);
    let max_turns = match policy {
        ContextPolicy::KeepLastNTurns { max_turns } => *max_turns as usize,
        _ => usize::MAX,
    };
    // The newest turn (the one being answered) is always kept.
    let mut first_turn = turns.len().saturating_sub(max_turns.max(1));
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
                reserve_for_reply,
                context_length.min(limit + reserve_for_reply),
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
            100,
            20,
            &mut count(&mut calls),
        )
        .unwrap();
        assert_eq!(out.kept.len(), 7);
        let err = apply_policy(
            &ContextPolicy::KeepAll {},
            &conversation(),
            80,
            20,
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
        let out = apply_policy(&policy, &conversation(), 1000, 10, &mut count(&mut calls)).unwrap();
        // Turn 2 (u2, a2, t2) is kept whole with sys and u3: 50 > 45, so it goes too.
        assert_eq!(out.kept, vec![0, 6]);
        assert_eq!(out.dropped, vec![1, 2, 3, 4, 5]);
        assert_eq!((out.tokens_before, out.tokens_after), (70, 20));
        assert!(calls <= 4, "{calls} token counts");
        let out = apply_policy(
            &ContextPolicy::SlidingWindow { max_tokens: 50 },
            &conversation(),
            1000,
            10,
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
        let policy = ContextPolicy::KeepLastNTurns { max_turns: 2 };
        let a = apply_policy(&policy, &conversation(), 1000, 10, &mut count(&mut calls)).unwrap();
        let b = apply_policy(&policy, &conversation(), 1000, 10, &mut count(&mut calls)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.kept, vec![0, 3, 4, 5, 6]);
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
            1000,
            10,
            &mut count(&mut calls),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContextOverflow);
        let err = apply_policy(
            &ContextPolicy::KeepLastNTurns { max_turns: 0 },
            &conversation(),
            1000,
            10,
            &mut count(&mut calls),
        )
        .unwrap_err();
        assert!(err.message.contains("max_turns"));
    }
}
