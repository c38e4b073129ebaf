"""What XLA's own analyses say about a compiled program: its FLOPs and the memory of its buffers."""
import jax


def compiled_cost(jitted, *args):
  """(FLOPs, MB of arguments + outputs + temporaries) of the compiled XLA program, from XLA's own analyses, summed
  over the devices of its arguments' mesh, each of which runs one partition of it. XLA counts a loop's body once."""
  devices = len(jax.tree.leaves(args)[0].sharding.device_set)
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 1e6 if mem else float("nan")
  return devices * float(cost.get("flops", 0.0)), devices * mb
