-- Nothing reads requests by (state, updated_at), and every update of a request wrote it.
DROP INDEX IF EXISTS requests_state_idx;
