// Create this participant's node, show the greeting it received, send a reply, finish.
var my_node_id;

function show_greeting() {
  dallinger.getReceivedInfos(my_node_id).done(function (resp) {
    $("#greeting").text(resp.infos.length ? resp.infos[0].contents : "(nothing yet)");
    $("#submit-reply").prop("disabled", false);
  });
}

$(document).ready(function () {
  dallinger.createAgent().done(function (resp) {
    my_node_id = resp.node.id;
    show_greeting();
  }).fail(function () {
    dallinger.allowExit();
    dallinger.goToPage("questionnaire");
  });

  $("#submit-reply").click(function () {
    $("#submit-reply").prop("disabled", true);
    dallinger.createInfo(my_node_id, {contents: $("#reply").val(), info_type: "Info"})
      .done(function () {
        dallinger.allowExit();
        dallinger.goToPage("questionnaire");
      });
  });
});
