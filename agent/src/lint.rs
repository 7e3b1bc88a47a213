//! Task-definition lint (owned by the lint work).
