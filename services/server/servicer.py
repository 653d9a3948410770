"""Thin gRPC servicer: protobuf in -> pure core -> protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc as pb_grpc
from services.contract.auth import Authenticator
from services.contract.errors import FailedPrecondition
from services.contract.status import OnlineWinRate
from services.server.core import AssistantCore, UserStatusView
from services.server.lifecycle import (
    EraseOutcome,
    LifecycleOutcome,
    LifecycleService,
    requested_by,
)
from services.server.validation import Message, validate_feedback, validate_generate


class AssistantServicer(pb_grpc.AssistantServicer):
    """Each call is first authenticated and authorised for its user_id
    (services/contract/auth.py), then validated, then handed to the core."""

    def __init__(self, core: AssistantCore, limits, auth: Authenticator,  # type: ignore[no-untyped-def]
                 lifecycle: LifecycleService | None = None) -> None:
        self._core = core
        self._limits = limits
        self._auth = auth
        self._lifecycle = lifecycle

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        self._auth.check(context.invocation_metadata(), request.user_id)
        params = validate_generate(
            request.user_id,
            [Message(m.role, m.content) for m in request.messages],
            request.num_candidates,
            request.max_tokens,
            request.temperature if request.HasField("temperature") else None,
            request.top_p if request.HasField("top_p") else None,
            request.seed if request.HasField("seed") else None,
            self._limits,
            base_model=request.base_model,
        )
        async for c in self._core.generate(params):
            yield pb.GenerateResponse(
                response_id=c.response_id, candidate_index=c.candidate_index, text=c.text,
                finished=c.finished, adapter_version=c.adapter_version,
                finish_reason=c.finish_reason, completion_tokens=c.completion_tokens)

    async def SubmitFeedback(self, request: pb.FeedbackRequest,
                             context: grpc.aio.ServicerContext) -> pb.FeedbackAck:
        self._auth.check(context.invocation_metadata(), request.user_id, request.labeler_id)
        kind = request.WhichOneof("kind")
        if kind == "thumbs":
            ids, up = [request.thumbs.response_id], request.thumbs.up
        else:
            ids, up = list(request.ranking.response_ids), None
        params = validate_feedback(request.user_id, request.labeler_id, request.feedback_id,
                                   kind, ids, up)
        result = await self._core.submit_feedback(params)
        return pb.FeedbackAck(feedback_id=result.feedback_id, partition=result.partition,
                              offset=result.offset)

    async def GetUserStatus(self, request: pb.UserStatusRequest,
                            context: grpc.aio.ServicerContext) -> pb.UserStatus:
        self._auth.check(context.invocation_metadata(), request.user_id)
        return to_proto_status(self._core.user_status(request.user_id))


    # --- lifecycle operations (admin token) ---------------------------------------------
    def _admin(self, context: grpc.aio.ServicerContext) -> LifecycleService:
        self._auth.check_admin(context.invocation_metadata())
        return self._lifecycle_service()

    def _lifecycle_service(self) -> LifecycleService:
        if self._lifecycle is None:
            raise FailedPrecondition("lifecycle operations are not enabled on this server")
        return self._lifecycle

    async def ListVersions(self, request: pb.LifecycleRequest,
                           context: grpc.aio.ServicerContext) -> pb.VersionList:
        view = self._admin(context).versions(request.user_id)
        return pb.VersionList(
            user_id=view.user_id, served_version=view.served_version,
            pinned_version=view.control.pinned, reset=view.control.reset,
            versions=[pb.AdapterVersion(
                version=v.version, parent_version=v.parent_version, created_at=v.created_at,
                steps=v.steps, feedback_count=v.feedback_count, reward_before=v.reward_before,
                reward_after=v.reward_after, judge_before=v.judge_before,
                judge_after=v.judge_after, kl=v.kl, online_vs_base=_win_rate(v.online_vs_base),
                online_vs_parent=_win_rate(v.online_vs_parent), pinned=v.pinned,
                rolled_back=v.rolled_back, restores=v.restores,
                rollback_reason=v.rollback_reason) for v in view.versions])

    async def Rollback(self, request: pb.LifecycleRequest,
                       context: grpc.aio.ServicerContext) -> pb.LifecycleResult:
        return _result(await self._admin(context).rollback(request.user_id, request.version))

    async def Pin(self, request: pb.LifecycleRequest,
                  context: grpc.aio.ServicerContext) -> pb.LifecycleResult:
        return _result(await self._admin(context).pin(request.user_id, request.version))

    async def Unpin(self, request: pb.LifecycleRequest,
                    context: grpc.aio.ServicerContext) -> pb.LifecycleResult:
        return _result(await self._admin(context).unpin(request.user_id))

    async def Reset(self, request: pb.LifecycleRequest,
                    context: grpc.aio.ServicerContext) -> pb.LifecycleResult:
        return _result(await self._admin(context).reset(request.user_id))

    async def Erase(self, request: pb.LifecycleRequest,
                    context: grpc.aio.ServicerContext) -> pb.EraseResult:
        """An admin token, or the user's own: a user may erase themself."""
        caller = self._auth.check(context.invocation_metadata(), request.user_id)
        lifecycle = self._lifecycle_service()
        return _erase_result(await lifecycle.erase(request.user_id, requested_by(caller)))


def _result(out: LifecycleOutcome) -> pb.LifecycleResult:
    return pb.LifecycleResult(user_id=out.user_id, served_version=out.served_version,
                              pinned_version=out.control.pinned, reset=out.control.reset,
                              changed=out.changed, detail=out.detail)


def _erase_result(out: EraseOutcome) -> pb.EraseResult:
    return pb.EraseResult(
        user_id=out.user_id, erased_at=out.erased_at, deleted_versions=out.deleted_versions,
        deleted_status=out.deleted_status, lifted_hold=out.lifted_hold,
        tombstone_partition=out.tombstone_partition, tombstone_offset=out.tombstone_offset,
        changed=out.changed, detail=out.detail)


def to_proto_status(view: UserStatusView) -> pb.UserStatus:
    status = pb.UserStatus(
        user_id=view.user_id, adapter_version=view.adapter_version,
        feedback_accepted=view.feedback_accepted, generations_served=view.generations_served)
    t = view.trainer
    if t is None:
        return status
    status.MergeFrom(pb.UserStatus(
        feedback_events_trained=t.feedback_events, preference_pairs=t.preference_pairs,
        thumbs_labels=t.thumbs_labels, reward_model_accuracy=t.reward_model_accuracy,
        reward_model_shared_accuracy=t.reward_model_shared_accuracy,
        reward_model_heldout_pairs=t.reward_model_heldout_pairs,
        last_reward_before=t.last_reward_before, last_reward_after=t.last_reward_after,
        last_kl=t.last_kl, last_publish_decision=t.last_publish_decision,
        reward_model_judge_accuracy=t.reward_model_judge_accuracy,
        last_judge_before=t.last_judge_before, last_judge_after=t.last_judge_after,
        ppo_steps_total=t.ppo_steps_total, ppo_max_steps=t.ppo_max_steps,
        reward_threshold=t.reward_threshold, training_state=t.training_state,
        labelers=[pb.LabelerScore(labeler_id=s.labeler_id, agreement=s.agreement,
                                  judgements=s.judgements, flagged=s.flagged)
                  for s in t.labelers],
        trainer_updated_at=t.updated_at,
        online_vs_base=_win_rate(t.online_vs_base),
        online_vs_parent=_win_rate(t.online_vs_parent), last_rollback=t.last_rollback))
    return status


def _win_rate(w: OnlineWinRate) -> pb.OnlineWinRate:
    return pb.OnlineWinRate(version=w.version, arm_version=w.arm_version, wins=w.wins,
                            losses=w.losses, ties=w.ties, win_rate=w.win_rate, lower=w.lower,
                            upper=w.upper)
