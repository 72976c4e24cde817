//! Memory injection: regions of memory that are really charged (populated and dirtied), and the
//! processes that hold them.

pub mod alloc;
