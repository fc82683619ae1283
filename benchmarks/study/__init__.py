"""The one study runner of the time-to-accuracy benchmarks: contenders, the workload protocol, the clock, the
equal-time rule, the verdict, the one training loop and the one result shape."""
from .contender import (CONTENDER_SCHEDULES, Contender, ContenderTrainer, attach, contender_trainer, study_schedule,
                        trainer_timer)
from .runner import (SCHEMA, PlansRates, Study, StudyRun, Timer, Verdict, Workload, calibrate, calibration_contenders,
                     equal_time_steps, modelled, planned_equal_time_steps, run_study, study_dict, study_result)
from .training import Evaluate, train_contender

__all__ = ["CONTENDER_SCHEDULES", "SCHEMA", "Contender", "ContenderTrainer", "Evaluate", "PlansRates", "Study",
           "StudyRun", "Timer", "Verdict", "Workload", "attach", "calibrate", "calibration_contenders",
           "contender_trainer", "equal_time_steps", "modelled", "planned_equal_time_steps", "run_study", "study_dict",
           "study_result", "study_schedule", "train_contender", "trainer_timer"]
