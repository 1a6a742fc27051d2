"""A load-balancer policy that reads get_metrics() on every pick (as the seeds' sample
does) and remembers what it saw."""


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.get_metrics = settings["get_metrics"]
        self.seen = None

    def eval(self, parameters, input_data, context):
        self.seen = self.get_metrics()
        instances = self.seen["block_metrics"].get("instances", {})
        loaded = sorted(
            input_data["instances"], key=lambda i: instances.get(i, {}).get("inflight", 0)
        )
        return {"instance_id": loaded[0]}
