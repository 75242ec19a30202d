"""The CloudProvider over EC2 through boto3, the same calls against real AWS and against an
emulator on loopback (only `endpoint_url` differs).

What it calls and why:
- `RunInstances` (one instance, from the launch template or the AMI, user data that starts
  `mark worker`), with `InstanceMarketOptions` for spot (max price = the on-demand price, so a spot
  instance never costs more than its on-demand twin). A `ClientToken` makes a retried launch
  idempotent: a throttled call that in fact went through does not buy a second instance.
- `TerminateInstances`; an instance already gone is success (the CloudProvider contract).
- `DescribeInstances` filtered by the `mark:owner` tag: what `list` returns and what the
  interruption poll watches; `DescribeSpotInstanceRequests` for the spot status codes that come
  before the instance state changes (`marked-for-termination`, `marked-for-stop`,
  `instance-terminated-by-price`...).
- `DescribeSpotPriceHistory` for spot prices; on-demand prices come from the catalog (EC2's API has
  none). `DescribeInstanceTypes` and `DescribeInstanceTypeOfferings` for type facts and zone
  availability when the credentials allow them; the catalog otherwise. Describe calls go through
  boto3's paginators.

Errors become typed Mark errors (`errors.mapped_error`): capacity codes
(InsufficientInstanceCapacity, SpotMaxPriceTooLow, ...) raise `InsufficientCapacity`, and the
planner steers the next plan to another pool or to on-demand; a missing resource raises
`CloudNotFound`; UnauthorizedOperation `PermissionDenied`, naming the missing permission and the
policy in deploy/iam/. Throttling is retried by botocore's standard retry mode; what outlives it
is a transient `CloudError`, which `provisioner.adapters.retry.RetryingCloud` retries with
backoff in the control plane.

Dry run (`cloud.dry_run`): every call that would change or buy something is logged with its
parameters and sent with `DryRun=True`, so AWS still checks permissions and parameters; the
launched instances exist only in this process (ids `dryrun-...`) so that the control plane runs
on as if they did. Read-only calls are made for real: the plan needs prices and the fleet.

Modules: `cloud` (Ec2Cloud and its calls), `launch` (what RunInstances carries: tags, spot
options, user data), `offerings` (types, zones and prices as Mark's values), `instances`
(instance rows and interruption codes), `errors` (EC2's codes to Mark's errors).
"""

from provisioner.adapters.ec2.cloud import Ec2Cloud
from provisioner.adapters.ec2.errors import CAPACITY_ERROR_CODES, THROTTLE_ERROR_CODES
from provisioner.adapters.ec2.instances import SPOT_INTERRUPTION_CODES
from provisioner.adapters.ec2.launch import MARKET_TAG, PRICE_TAG

__all__ = [
    "Ec2Cloud",
    "CAPACITY_ERROR_CODES",
    "THROTTLE_ERROR_CODES",
    "SPOT_INTERRUPTION_CODES",
    "MARKET_TAG",
    "PRICE_TAG",
]
