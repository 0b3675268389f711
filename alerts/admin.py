"""alerts admin panels: the rules (editable) and the recent history (read-only)."""

from alerts.rules import RuleBodySchema
from alerts.service import service
from pyedge import AdminPanel
from pyedge.security import Role

service.admin_panel(
    AdminPanel(
        title="Rules",
        description="Each rule and its state. Saving replaces the rule and restarts its state; "
        "rules of the rules file are read-only here (change the file).",
        source="rules",
        columns=("name", "sensor", "kind", "threshold", "low", "high", "severity", "state"),
        edit="rules/{name}",
        form=RuleBodySchema,
        method="PUT",
        role=Role.OPERATOR,
    )
)
service.admin_panel(
    AdminPanel(
        title="Recent events",
        description="The latest fired and cleared rules, newest first.",
        source="history",
        key="ts",
        columns=("ts", "rule", "state", "value", "severity", "message"),
    )
)
