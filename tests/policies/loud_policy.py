"""A stabilityChecker policy that prints when imported and when run (block up runs its
health checker, and so this policy, in its own process)."""

print("loud policy: imported")


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        print("loud policy: created")

    def eval(self, parameters, input_data, context):
        print("loud policy: eval")
        return {}

    def management(self, action, data):
        return {}
