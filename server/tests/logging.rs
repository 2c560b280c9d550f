//! The logging extension over HTTP and gRPC: Triton's settings read and changed at run time,
//! and Triton's refusals (a log file location, an unknown format, wrong types). That a change
//! reaches the process's log filter is checked on the `nereid` binary (tests/binary.rs).

mod common;

use common::TestServer;
use nereid_protocol::inference::log_settings_request::setting_value::ParameterChoice as In;
use nereid_protocol::inference::log_settings_request::SettingValue;
use nereid_protocol::inference::log_settings_response::setting_value::ParameterChoice as Out;
use nereid_protocol::inference::LogSettingsRequest;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_settings_are_read_and_changed() {
    let server = TestServer::start_default().await;
    let defaults = json!({"log_file": "", "log_info": true, "log_warning": true,
                          "log_error": true, "log_verbose_level": 0, "log_format": "ISO8601"});
    assert_eq!(server.get("/v2/logging").await.json(), defaults);

    let reply = server
        .post_json(
            "/v2/logging",
            &json!({"log_verbose_level": 1, "log_info": null}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut expected = defaults.clone();
    expected["log_verbose_level"] = json!(1);
    assert_eq!(reply.json(), expected);

    server
        .post_json("/v2/logging", &json!({"log_file": "/tmp/nereid.log"}))
        .await
        .assert_error(
            501,
            "log file location can not be updated through network protocol",
        );
    server
        .post_json("/v2/logging", &json!({"log_format": "default"}))
        .await
        .assert_error_contains(501, "invalid argument for --log_format, got: default");
    server
        .post_json("/v2/logging", &json!({"log_info": "yes"}))
        .await
        .assert_error(400, "'log_info' must be a boolean");
    server
        .post_json("/v2/logging", &json!({"log_verbose_level": -1}))
        .await
        .assert_error(400, "'log_verbose_level' must be a non-negative integer");
    assert_eq!(
        server.get("/v2/logging").await.json(),
        expected,
        "refused changes change nothing"
    );

    // gRPC reads the same settings and changes them too.
    let mut client = server.grpc_client().await;
    let setting = |choice: In| SettingValue {
        parameter_choice: Some(choice),
    };
    let response = client
        .log_settings(LogSettingsRequest {
            settings: [
                ("log_info".to_string(), setting(In::BoolParam(false))),
                ("log_verbose_level".to_string(), setting(In::Uint32Param(0))),
            ]
            .into(),
        })
        .await
        .expect("LogSettings")
        .into_inner();
    let value = |name: &str| response.settings[name].parameter_choice.clone();
    assert_eq!(value("log_info"), Some(Out::BoolParam(false)));
    assert_eq!(value("log_verbose_level"), Some(Out::Uint32Param(0)));
    assert_eq!(
        value("log_format"),
        Some(Out::StringParam("ISO8601".into()))
    );
    assert_eq!(server.get("/v2/logging").await.json()["log_info"], false);
    let refused = client
        .log_settings(LogSettingsRequest {
            settings: [("log_info".to_string(), setting(In::Uint32Param(1)))].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}
