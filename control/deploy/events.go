package deploy

import "time"

// Event types. Every decision of the engine and every operator action is
// one of these in the log, applied to the deployment tables in the same
// transaction (see apply). They carry the robot id in their data, not in
// Event.RobotID: the robots projection must not count a deployment's
// bookkeeping as a sign of life from the robot.
const (
	TypeCreated         = "DeploymentCreated"
	TypeBatchStarted    = "DeploymentBatchStarted"
	TypeBatchCompleted  = "DeploymentBatchCompleted"
	TypeRobotDeferred   = "DeploymentRobotDeferred"
	TypeRobotUpdateSent = "DeploymentRobotUpdateSent"
	TypeRobotProgress   = "DeploymentRobotProgress"
	TypeRobotResult     = "DeploymentRobotUpdateResult"
	TypePaused          = "DeploymentPaused"
	TypeResumed         = "DeploymentResumed"
	TypeAborted         = "DeploymentAborted"
	TypeCompleted       = "DeploymentCompleted"
	TypeRollbackStarted = "DeploymentRollbackStarted"
	TypeRolledBack      = "DeploymentRolledBack"
)

// EventTypes lists every deployment event type (for tailing and rebuild).
func EventTypes() []string {
	return []string{TypeCreated, TypeBatchStarted, TypeBatchCompleted, TypeRobotDeferred, TypeRobotUpdateSent,
		TypeRobotProgress, TypeRobotResult, TypePaused, TypeResumed, TypeAborted, TypeCompleted, TypeRollbackStarted, TypeRolledBack}
}

// Deployment states.
const (
	StateRunning     = "running"
	StatePaused      = "paused"
	StateAborted     = "aborted"
	StateCompleted   = "completed"
	StateRollingBack = "rolling_back"
	StateRolledBack  = "rolled_back"
)

// Robot states within a deployment.
const (
	RobotPending        = "pending"  // not yet sent
	RobotDeferred       = "deferred" // its turn came while teleoperated or offline; retried
	RobotSent           = "sent"     // update command queued; waiting for a final state
	RobotSucceeded      = "succeeded"
	RobotFailed         = "failed"
	RobotRollbackSent   = "rollback_sent"
	RobotRolledBack     = "rolled_back"
	RobotRollbackFailed = "rollback_failed"
)

// Batch states.
const (
	BatchPending = "pending"
	BatchRunning = "running"
	BatchDone    = "done"
)

// CreatedData is the data of DeploymentCreated: the spec (with defaults)
// and the plan, fixed at creation so every node derives the same batches.
type CreatedData struct {
	ID      string   `json:"id"`
	Spec    Spec     `json:"spec"`
	Robots  []string `json:"robots"`  // sorted
	Batches []int    `json:"batches"` // sizes; robots fill them in order
}

// BatchData is the data of DeploymentBatchStarted and -Completed.
type BatchData struct {
	ID        string `json:"id"`
	Batch     int    `json:"batch"`
	Succeeded int    `json:"succeeded,omitempty"`
	Failed    int    `json:"failed,omitempty"`
	Deferred  int    `json:"deferred,omitempty"`
}

// RobotData is the data of the per-robot events.
type RobotData struct {
	ID      string `json:"id"`
	RobotID string `json:"robot_id"`
	// Sent: the command queued with it, its deadline and whether it asks
	// for a rollback.
	CommandID string    `json:"command_id,omitempty"`
	Deadline  time.Time `json:"deadline,omitzero"`
	Rollback  bool      `json:"rollback,omitempty"`
	// Result: the robot's new state within the deployment (Robot*).
	Result string `json:"result,omitempty"`
	// UpdateState is the agent's last reported state (protocol.Update*).
	UpdateState string `json:"update_state,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// SourceSeq is the log sequence of the robot's report this is about.
	SourceSeq int64 `json:"source_seq,omitempty"`
}

// StateData is the data of the deployment state changes.
type StateData struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}
