//! Pure decision logic of Stagecoach: admission checks the schema cannot express, the
//! status planners, and (later) release planning and toggle evaluation. No IO: every
//! function takes what it needs, including the time, and returns a value.

pub mod acceptance;
pub mod admission;
pub mod release;
pub mod toggle;
