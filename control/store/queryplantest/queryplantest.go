// Package queryplantest reads SQLite's EXPLAIN QUERY PLAN for a statement, so
// tests can pin that a query the whole fleet runs often keeps using its
// index. It does not import the store, so the store's own tests can use it.
package queryplantest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// Explain returns the plan's lines joined with "; ", e.g.
// "SEARCH r USING COVERING INDEX robots_sweep (status=? AND last_event<?)".
func Explain(ctx context.Context, db *sql.DB, query string, args ...any) (string, error) {
	rows, err := db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		return "", fmt.Errorf("explain %.60q: %w", query, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			return "", fmt.Errorf("explain %.60q: %w", query, err)
		}
		plan = append(plan, detail)
	}
	return strings.Join(plan, "; "), rows.Err()
}
