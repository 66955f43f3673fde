package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/store"
)

func newLeave(f *adminFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "leave",
		Short: "Take the local control node out of the cluster, then stop it",
		Long: `Hand leadership over (if this node holds it), remove this node from the
cluster's membership so the others stop counting it for quorum, and stop it.
Use before decommissioning a machine; for a member that is already dead use
` + "`control cluster remove ID`" + ` from a live one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out map[string]string
			if err := f.client().Do(cmd.Context(), "POST", "/v1/cluster/leave", nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s left the cluster; it is stopping\n", out["left"])
			return nil
		},
	}
}

func newCluster(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect and repair cluster membership"}
	status := &cobra.Command{
		Use:   "status",
		Short: "Members, their roles and the leader",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Leader  string         `json:"leader"`
				This    string         `json:"this"`
				Members []store.Member `json:"members"`
			}
			if err := f.client().Do(cmd.Context(), "GET", "/v1/cluster", nil, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESS\tROLE\t")
			voters := 0
			for _, m := range out.Members {
				mark := ""
				if m.Address == out.Leader {
					mark += "leader "
				}
				if m.Address == out.This {
					mark += "(this node)"
				}
				if m.Role == "voter" {
					voters++
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", m.ID, m.Address, m.Role, mark)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if voters < 3 {
				fmt.Fprintf(cmd.OutOrStdout(), "\nwarning: %d voter(s): losing any member stops writes; run a third member (`control witness`)\n", voters)
			}
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a dead member (by id from `cluster status`)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.client().Do(cmd.Context(), "DELETE", "/v1/cluster/members/"+args[0], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "member %s removed\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(status, remove)
	return cmd
}

func newRecover() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Make a stopped node the sole member after the cluster lost its quorum",
		Long: `When a majority of members is lost for good, the survivors cannot elect a
leader and refuse every write. Stop the surviving node, run this on its data
directory, then start it again with ` + "`control run`" + ` (no --join): it comes
back alone with its data. Wipe the lost members' data directories before
joining them again; never start them on their old data (they would form a
second cluster). See docs/OPERATIONS.md.`,
		Example: "  systemctl stop lekiwi-control\n  control recover --data-dir /var/lib/lekiwi/control\n  systemctl start lekiwi-control",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, addr, err := store.Recover(dataDir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %d (%s) is now the only member; start it, then add members again\n", id, addr)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory of the stopped survivor (required)")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}
