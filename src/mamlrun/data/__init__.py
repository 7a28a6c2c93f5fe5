"""Task samplers: each turns a dataset into batches of few-shot tasks on the training device."""

from mamlrun.data.tasks import TaskBatch, TaskSampler

__all__ = ["TaskBatch", "TaskSampler"]
