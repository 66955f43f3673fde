package endpoint

import (
	"strings"
	"testing"
)

func TestAgentURL(t *testing.T) {
	tests := []struct {
		base    string
		want    string
		wantErr string
	}{
		{base: "ws://127.0.0.1:8080", want: "ws://127.0.0.1:8080/v1/agent"},
		{base: "http://127.0.0.1:8080", want: "ws://127.0.0.1:8080/v1/agent"},
		{base: "https://control.example", want: "wss://control.example/v1/agent"},
		{base: "wss://control.example/", want: "wss://control.example/v1/agent"},
		{base: "http://lb.example/fleet-a/", want: "ws://lb.example/fleet-a/v1/agent"},
		{base: "ws://h:1/v1/agent", want: "ws://h:1/v1/agent"},
		{base: " ws://h:1 ", want: "ws://h:1/v1/agent"},
		{base: "control.local:8080", wantErr: "has no scheme: write ws://control.local:8080"},
		{base: "ftp://h", wantErr: `scheme "ftp"`},
		{base: "ws://", wantErr: "no host"},
		{base: "ws://h/?x=1", wantErr: "query"},
		{base: "ws://u:p@h", wantErr: "user information"},
		{base: "ws://h\x7f", wantErr: "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			got, err := AgentURL(tt.base)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("AgentURL(%q) = %q, %v; want error containing %q", tt.base, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("AgentURL(%q) = %q, %v; want %q", tt.base, got, err, tt.want)
			}
		})
	}
}
