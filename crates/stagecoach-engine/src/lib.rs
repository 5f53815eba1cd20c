//! Pure decision logic of Stagecoach: admission checks the schema cannot express
//! (`admission`), the `Accepted` condition (`acceptance`), the release planner
//! (`release`), what receivers are told and when (`notify`), the audit record of a
//! release that ended and its retention (`record`), the audit log's decisions (`audit`),
//! DORA metrics (`dora`), toggle evaluation and flagd rendering (`toggle`). No IO: every
//! function takes what it needs, including the time, and returns a value.

pub mod acceptance;
pub mod admission;
pub mod audit;
pub mod dora;
pub mod notify;
pub mod pipeline;
pub mod record;
pub mod release;
pub mod schedule;
pub mod toggle;
