//! The chat runtime: messages, templates, context policies, sessions with their own KV
//! cache, and the JSON of the chat calls. Knows nothing of C.

mod message;
mod policy;
mod retrieval;
mod runtime;
mod session;
pub mod structured;
mod template;
mod tool_constraint;
mod tools;
mod types;

pub use message::{FunctionCall, Message, Role, ToolCall};
pub use policy::{ContextLimits, ContextPolicy, PolicyOutcome, apply_policy};
pub use retrieval::{Chunk, Citation};
pub use runtime::Chat;
pub use session::{
    ChatEvents, ContextReport, HistoryMode, HostReply, PreparedPrompt, Session, SessionConfig,
    Turn, TurnOutput,
};
pub use template::{
    BuiltinFormat, ChatTemplate, MAX_RENDERED_BYTES, MAX_TEMPLATE_FUEL, MAX_TEMPLATE_RECURSION,
    RenderedPrompt, TemplateContext, TemplateError,
};
pub use tools::{ParsedCall, ParsedReply, ToolChoice, ToolFormat, ToolSpec, Tools, parse_reply};
pub use types::{
    ChatOptions, ChatRequest, EXPORT_FORMAT, EXPORT_VERSION, ExportEnvelope, MAX_MESSAGES,
    random_session_id, render_json, response_json,
};
