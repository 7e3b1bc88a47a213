//! Pure plans for each backend (owned by the plan work).
