// Package endpoint turns a control server's base URL, as an operator writes
// it in the agent's configuration, into the WebSocket URL the agent dials.
//
// Operators copy URLs from browsers and dashboards, so http and https are
// accepted and mapped to ws and wss; the agent path is appended here, in one
// place, so configuration validation and the dialer can never disagree.
package endpoint

import (
	"fmt"
	"net/url"
	"strings"
)

// AgentPath is the path of the agent gateway on every control node.
const AgentPath = "/v1/agent"

// AgentURL returns the WebSocket URL of the agent gateway under base:
// ws://host:port[/prefix]/v1/agent. base may use ws, wss, http or https;
// http maps to ws and https to wss. A base that already ends in /v1/agent is
// accepted as is so a copied full URL also works.
func AgentURL(base string) (string, error) {
	base = strings.TrimSpace(base)
	if !strings.Contains(base, "://") {
		// Without "://" url.Parse reads "host:port" as scheme "host": say
		// what the operator most likely forgot instead.
		return "", fmt.Errorf("server URL %q has no scheme: write ws://%s (or wss://, http://, https://)", base, base)
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("server URL %q does not parse: %w (write it like ws://control.local:8080)", base, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("server URL %q has scheme %q: use ws, wss, http or https", base, u.Scheme)
	}
	if u.Host == "" {
		return "", fmt.Errorf("server URL %q has no host: write it like ws://control.local:8080", base)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("server URL %q carries a query or fragment: give only scheme, host, port and an optional path prefix", base)
	}
	if u.User != nil {
		return "", fmt.Errorf("server URL %q carries user information: robots authenticate with their certificate, remove the user part", base)
	}
	path := strings.TrimRight(u.Path, "/")
	if !strings.HasSuffix(path, AgentPath) {
		path += AgentPath
	}
	u.Path = path
	u.RawPath = ""
	return u.String(), nil
}
