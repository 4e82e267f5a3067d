//! A launcher that acknowledges everything at once, serving on loopback:
//! it plays every launcher of a fleet in the admin's benchmarks.

use prism_launcher::pb::prism::{
    self as pb,
    launcher::v1::{
        GetProcessRequest, ListProcessesRequest, ListProcessesResponse, ProcessInfo,
        launcher_server::{Launcher, LauncherServer},
    },
};
use tonic::{Request, Response, Status};

pub struct AckingLauncher;

#[tonic::async_trait]
impl Launcher for AckingLauncher {
    async fn assign_process(
        &self,
        r: Request<pb::ProcessAssignment>,
    ) -> Result<Response<pb::ProcessAssignmentAck>, Status> {
        let a = r.into_inner();
        Ok(Response::new(pb::ProcessAssignmentAck {
            success: true,
            message: "started".into(),
            unit_name: format!("prism-pattern-{}.service", a.process_id),
            ..Default::default()
        }))
    }

    async fn revoke_process(
        &self,
        _: Request<pb::ProcessRevocation>,
    ) -> Result<Response<pb::ProcessRevocationAck>, Status> {
        Ok(Response::new(pb::ProcessRevocationAck {
            success: true,
            ..Default::default()
        }))
    }

    async fn get_process(
        &self,
        _: Request<GetProcessRequest>,
    ) -> Result<Response<ProcessInfo>, Status> {
        Err(Status::not_found("fake"))
    }

    async fn list_manifests(
        &self,
        _: Request<prism_launcher::pb::prism::launcher::v1::ListManifestsRequest>,
    ) -> Result<Response<prism_launcher::pb::prism::launcher::v1::ListManifestsResponse>, Status>
    {
        Ok(Response::new(Default::default()))
    }

    async fn list_processes(
        &self,
        _: Request<ListProcessesRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        Ok(Response::new(ListProcessesResponse::default()))
    }

    type WatchProcessesStream = futures_util::stream::Empty<
        Result<prism_launcher::pb::prism::launcher::v1::ProcessChange, Status>,
    >;

    async fn watch_processes(
        &self,
        _: Request<prism_launcher::pb::prism::launcher::v1::WatchProcessesRequest>,
    ) -> Result<Response<Self::WatchProcessesStream>, Status> {
        Ok(Response::new(futures_util::stream::empty()))
    }
}

/// Serve it on 127.0.0.1 (a port of its own); returns the address.
pub async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LauncherServer::new(AckingLauncher))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    address
}

/// A pattern assignment any launcher here takes (`/usr/bin/true`).
pub fn assignment(id: &str) -> pb::ProcessAssignment {
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "pattern".into(),
        version: 1,
        config: Some(pb::ProcessConfig {
            binary: "/usr/bin/true".into(),
            pattern: Some(pb::PatternProcessConfig {
                pattern_type: "keyvalue".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
