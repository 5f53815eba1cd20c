//! Pure decision logic of Stagecoach: admission checks the schema cannot express
//! (`admission`), the `Accepted` condition (`acceptance`), the release planner
//! (`release`), what receivers are told and when (`notify`), toggle evaluation and flagd
//! rendering (`toggle`). No IO: every function takes what it needs, including the time,
//! and returns a value.

pub mod acceptance;
pub mod admission;
pub mod notify;
pub mod pipeline;
pub mod release;
pub mod schedule;
pub mod toggle;
