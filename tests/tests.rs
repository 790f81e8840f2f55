//! End-to-end tests of the `fluxmoe` binary, grouped by theme.

mod cli;
