//! Test support for orb8 end-to-end tests.
