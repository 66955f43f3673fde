package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	dqlite "github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/client"
	"gopkg.in/yaml.v3"
)

// Leave hands leadership over (if this node holds it) and removes this
// node from the cluster's configuration, so the remaining members stop
// counting it for quorum. The caller closes the store afterwards.
func (s *Store) Leave(ctx context.Context) error {
	if err := s.app.Handover(ctx); err != nil {
		return fmt.Errorf("hand over before leaving: %w", err)
	}
	cli, err := s.app.Leader(ctx)
	if err != nil {
		return fmt.Errorf("find the leader to leave the cluster: %w", err)
	}
	defer cli.Close()
	if err := removeRetrying(ctx, cli, s.app.ID()); err != nil {
		return fmt.Errorf("remove node %d (%s) from the cluster: %w", s.app.ID(), s.app.Address(), err)
	}
	return nil
}

// removeRetrying removes member id, waiting out a configuration change
// already in flight (a role adjustment or a join): raft allows one at a time.
func removeRetrying(ctx context.Context, cli *client.Client, id uint64) error {
	for {
		err := cli.Remove(ctx, id)
		if err == nil || !strings.Contains(err.Error(), "configuration change is already in progress") {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (still busy when the deadline came: %w)", err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RemoveMember removes another member (a dead one) from the cluster.
func (s *Store) RemoveMember(ctx context.Context, id uint64) error {
	if id == s.app.ID() {
		return errors.New("this node cannot remove itself: use `control leave` on it")
	}
	cli, err := s.app.Leader(ctx)
	if err != nil {
		return fmt.Errorf("find the leader: %w", err)
	}
	defer cli.Close()
	nodes, err := cli.Cluster(ctx)
	if err != nil {
		return fmt.Errorf("list members: %w", err)
	}
	for _, n := range nodes {
		if n.ID == id {
			if err := removeRetrying(ctx, cli, id); err != nil {
				return fmt.Errorf("remove member %d (%s): %w", id, n.Address, err)
			}
			return nil
		}
	}
	return fmt.Errorf("member %d: %w (see `control cluster status`)", id, ErrNotFound)
}

// nodeInfo is go-dqlite app's info.yaml: this node's id and address.
type nodeInfo struct {
	ID      uint64 `yaml:"ID"`
	Address string `yaml:"Address"`
}

// Recover rewrites the cluster configuration in a stopped node's data
// directory so that it alone is the cluster — for when a majority of
// members is permanently lost and the cluster cannot elect a leader. Its
// data stays; other members' must not be started again (they would form a
// second, diverging cluster): wipe them and join them anew.
func Recover(dir string) (id uint64, address string, err error) {
	b, err := os.ReadFile(filepath.Join(dir, "info.yaml"))
	if err != nil {
		return 0, "", fmt.Errorf("read node identity in %s: %w (is this a control data directory?)", dir, err)
	}
	var info nodeInfo
	if err := yaml.Unmarshal(b, &info); err != nil || info.ID == 0 || info.Address == "" {
		return 0, "", fmt.Errorf("node identity in %s/info.yaml is unreadable: %v", dir, err)
	}
	self := []dqlite.NodeInfo{{ID: info.ID, Address: info.Address, Role: client.Voter}}
	if err := dqlite.ReconfigureMembershipExt(dir, self); err != nil {
		return 0, "", fmt.Errorf("rewrite the raft configuration in %s: %w (is the node stopped?)", dir, err)
	}
	// The app's own list of peers must agree, or it would keep dialing the
	// dead ones.
	store, err := client.NewYamlNodeStore(filepath.Join(dir, "cluster.yaml"))
	if err != nil {
		return 0, "", fmt.Errorf("open the peer list in %s: %w", dir, err)
	}
	if err := store.Set(context.Background(), []client.NodeInfo{{ID: info.ID, Address: info.Address, Role: client.Voter}}); err != nil {
		return 0, "", fmt.Errorf("rewrite the peer list in %s: %w", dir, err)
	}
	return info.ID, info.Address, nil
}
