//! One file per verb. Each takes the open [`Session`](crate::session::Session), its flags and
//! where to write, and returns when done. Above every other module but the crate root.

pub mod cleanup;
pub mod completion;
pub mod dns;
pub mod drops;
pub mod flows;
pub mod gpu;
pub mod status;
pub mod syscall;
pub mod tcp;
pub mod top;
pub mod trace;
pub mod version;
