//! `kubectl orb8 top`'s model and view, apart (as tokio-console keeps them): [`state`] is fed
//! by events (flow-table snapshots, the merged event stream, keys) and knows nothing of the
//! terminal; [`view`] draws a state with ratatui and reads nothing else. The command that owns
//! the terminal and the agents is `commands::top`.

pub mod state;
pub mod view;
