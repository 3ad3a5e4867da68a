"""How the model is placed: which Lightning strategy runs it and how the model is sharded.

Every strategy runs the same model and data. `single` and `ddp` replicate the model; `fsdp` and
`model_parallel` use Lightning's `ModelParallelStrategy`, which builds a 2-D device mesh
(data_parallel x tensor_parallel) and calls `AgentModule.configure_model`, where
`sharding.apply_parallelism` shards the model: tensor parallelism (DTensor) over the
`tensor_parallel` mesh dimension with the model's own plan, then FSDP2 (`fully_shard`) over the
`data_parallel` dimension.

- `degrees`: the strategies, their degrees and what `strategy=auto` picks; checked before any rank starts.
- `sharding`: the model's tensor-parallel plan and FSDP2 units, applied on each rank.
- `strategies`: the Lightning strategy a config asks for.
"""
