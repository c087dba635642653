//! The four stages, in flow order, and the optional fifth, `embed`, after rank. Each is one file of one shape: a config type with
//! `build(&Deps)`, the stage struct implementing [`crate::stage::Stage`], and `mod tests`.

pub mod embed;
pub mod evaluate;
pub mod filter;
pub mod generate;
pub mod rank;
