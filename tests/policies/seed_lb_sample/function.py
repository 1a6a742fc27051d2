# The load-balancer policy sample from seeds/block.txt ("Block Load Balancer"), kept as
# the seed wrote it (only re-indented from the document's layout): it must run unchanged.
import random


class AIOsv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        """
        Initializes an AIOsv1PolicyRule instance.

        Args:
            rule_id (str): Unique identifier for the rule.
            settings (dict): Configuration settings for the rule.
            parameters (dict): Parameters defining the rule's behavior.
        """
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters

        """
            get_metrics is a function injected by the load balancer environment into the load balancer.
            get_metrics() can be called anytime to obtain the current block and cluster metrics.
            the block is running on, this metrics can be used for load balancing decision making.

            block_data: contains the data of the block, check the documentation of DBs to understand the structure.
            cluster_data: contains the data of the cluster, check the documentation of DBs to understand the structure.

        """
        self.metrics_function = self.settings["get_metrics"]
        self.block_data = self.settings["block_data"]
        self.cluster_data = self.settings["cluster_data"]

        """
            session_ids_cache is not mandatory, but this technique can be used for speeding up the
            load balancing computations or in cases where the instances run stateful computations.
        """
        self.session_ids_cache = {}

        """
            This contains the list of instances that are currently running, the current instances list will be passed on every input to the eval() function,
            so when new instances are added/removed, the refreshed list is always passed. You can optionally save it as a class member, like:

            self.current_instances = input_data["instances"]
        """
        self.current_instances = []

    def eval(self, parameters, input_data, context):
        """
        Evaluates the policy rule.
        """
        """
        Check if new instances have been added or deleted
        input_data["instances"] = ["instance-0", "instance-1", ...]
        """
        if len(input_data["instances"]) != len(self.current_instances):
            """
            Reset the sessions cache (For example)
            """
            self.session_ids_cache.clear()

        """
        For example: check if the session_id is already found in the sessions cache:
        """
        packet = input_data["packet"]
        # packet is the proto object of AIOSPacket
        session_id = packet.session_id
        if session_id in self.session_ids_cache:
            return {
                "instance_id": self.session_ids_cache[session_id]
            }

        """
        For example: The current metrics can be obtained by calling the `metrics_function`.
        """
        current_metrics = self.metrics_function()

        """
        Do the actual computation here
        """
        random_instance_id = random.choice(input_data["instances"])

        """
        save the current instance_id for the session_id in cache:
        """
        self.session_ids_cache[session_id] = random_instance_id

        return {
            "instance_id": random_instance_id
        }

    def management(self, action: str, data: dict) -> dict:
        """
        Executes a custom management command.
        """
        # Implement custom management actions here
        pass
