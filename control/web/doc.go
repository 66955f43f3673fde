// Package web serves the fleet dashboard: a single-page application (plain
// HTML, CSS and JavaScript embedded with embed.FS, no build step and no
// external CDN) that talks to control's own REST API (/v1/...) with the
// bearer token the user logs in with, and follows the fleet live over
// /v1/stream.
//
// Handler serves the application at / and its assets under /assets/. Every
// path the application routes itself (/robots/<id>, /events, /deployments,
// /login) answers with the same index page, so a reload or a shared link
// works. The Content-Security-Policy allows scripts, styles and
// connections from the same origin only (no inline scripts or styles).
// Asset URLs in the index carry a content hash (?v=...), so assets are cached
// for a year while the index itself is revalidated on every load.
package web
