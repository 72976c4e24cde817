//! Memory injection: regions of memory that are really charged (populated and dirtied), the
//! worker processes that hold them inside the target cgroup (started, as apps are, by `spawn`),
//! and the agent that steers them and reports each step as an `AgentEvent`.

pub mod agent;
pub mod alloc;
pub mod control;
pub mod event;
pub mod plan;
pub mod pressure;
pub mod spawn;
pub mod worker;
